"""The text-embeddings-inference (TEI) API on top of the Embedder, so that TEI's clients (huggingface_hub's
InferenceClient, LangChain's HuggingFaceEndpointEmbeddings, ...) work by changing only their URL: /embed and `POST /`,
/tokenize, /decode, /similarity and GET /info, with TEI's bodies and (errors.py) its error body and statuses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from embedding_server import __version__
from embedding_server.errors import ApiError, ErrorCode
from embedding_server.limits import check_item_count, check_text_length
from embedding_server.schemas import (
    TeiDecodeRequest,
    TeiDecodeResponse,
    TeiEmbedRequest,
    TeiEmbedResponse,
    TeiInfo,
    TeiSimilarityRequest,
    TeiSimilarityResponse,
    TeiToken,
    TeiTokenizeRequest,
    TeiTokenizeResponse,
)
from embedding_server.wire import encode_vectors
from models.tokenizer import TextTokenizer

if TYPE_CHECKING:  # the Embedder holds this object: a run-time import would be circular
    from embedding_server.embedder import Embedder


class TeiApi:
    """TEI's routes, served by the text model."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    async def embed(self, request: TeiEmbedRequest) -> TeiEmbedResponse:
        model = self.embedder.text
        if request.dimensions is not None and request.dimensions != model.dimension:
            raise ApiError(
                ErrorCode.UNSUPPORTED_PARAMETER,
                f"dimensions {request.dimensions} is not supported: {model.model_id} gives {model.dimension}",
            )
        texts = self._texts(request.inputs, request.prompt_name)
        embedded = await self.embedder.embed_texts(
            model, texts, request.normalize, self._truncate(request.truncate), request.truncation_direction.lower()
        )
        return TeiEmbedResponse(encode_vectors(embedded.vectors, request.encoding_format))

    async def similarity(self, request: TeiSimilarityRequest) -> TeiSimilarityResponse:
        texts = self._texts([request.inputs.source_sentence, *request.inputs.sentences], request.prompt_name)
        embedded = await self.embedder.embed_texts(
            self.embedder.text, texts, True, self._truncate(request.truncate), request.truncation_direction.lower()
        )
        source, *others = embedded.vectors
        return TeiSimilarityResponse(np.asarray(others, dtype=np.float32).reshape(-1, len(source)) @ source)

    async def tokenize(self, request: TeiTokenizeRequest) -> TeiTokenizeResponse:
        tokenizer = self._tokenizer()
        texts = self._texts(request.inputs, request.prompt_name)
        return TeiTokenizeResponse(
            [
                [TeiToken(**vars(token)) for token in tokenizer.tokens(text, request.add_special_tokens)]
                for text in texts
            ]
        )

    async def decode(self, request: TeiDecodeRequest) -> TeiDecodeResponse:
        tokenizer = self._tokenizer()
        batch = request.ids if request.ids and isinstance(request.ids[0], list) else [request.ids]
        check_item_count(len(batch), "id lists")
        try:
            return TeiDecodeResponse([tokenizer.decode(ids, request.skip_special_tokens) for ids in batch])
        except OverflowError:
            raise ApiError(ErrorCode.INVALID_TOKEN_IDS, "a token id is out of range") from None

    def info(self) -> TeiInfo:
        model, settings = self.embedder.text, self.embedder.settings
        max_tokens = self._tokenizer().max_tokens
        # A model whose int8 export is refused is not served at all, so QUANTIZE says what serves.
        dtype = "int8" if settings.quantize == "int8" else "float16" if settings.device == "cuda" else "float32"
        return TeiInfo(
            model_id=model.model_id,
            model_dtype=dtype,
            model_type={"embedding": {"pooling": "mean"}},
            max_concurrent_requests=settings.max_queued_items,
            max_input_length=max_tokens,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=None,
            max_client_batch_size=settings.max_items_per_request,
            auto_truncate=True,
            tokenization_workers=1,
            version=__version__,
        )

    def _tokenizer(self) -> TextTokenizer:
        self.embedder.text.require()
        return self.embedder.tokenizers[self.embedder.text.name]

    @staticmethod
    def _texts(inputs: str | list[str], prompt_name: str | None) -> list[str]:
        if prompt_name is not None:
            raise ApiError(
                ErrorCode.UNSUPPORTED_PARAMETER, f"prompt_name {prompt_name!r}: the served model has no prompts"
            )
        texts = [inputs] if isinstance(inputs, str) else inputs
        check_item_count(len(texts), "inputs")
        for index, text in enumerate(texts):
            check_text_length(text, index)
        return texts

    @staticmethod
    def _truncate(truncate: bool | None) -> bool:
        """A request that does not say is cut, as TEI with --auto-truncate (which /info reports) does."""
        return True if truncate is None else truncate
