"""The OpenAI embeddings API (`POST /v1/embeddings`, `GET /v1/models`) on top of the Embedder, for the clients and
tools that already speak it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedding_server.errors import ApiError, ErrorCode
from embedding_server.limits import check_item_count, check_text_length
from embedding_server.schemas import (
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
    OpenAIUsage,
)
from embedding_server.served_model import Model
from embedding_server.wire import encode_vectors

if TYPE_CHECKING:  # the Embedder holds this object: a run-time import would be circular
    from embedding_server.embedder import Embedder


class OpenAIEmbeddings:
    """Routes an OpenAI request by `model` to the text model or to CLIP's text tower."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def served(self) -> list[Model]:
        """The models that embed text, as far as the store knows (a model service that is down still counts)."""
        return [m for m in (self.embedder.text, self.embedder.image_text) if m.enabled and m.problem is None]

    def models(self) -> OpenAIModelList:
        return OpenAIModelList(
            data=[
                OpenAIModel(id=m.model_id, created=m.created, owned_by=m.model_id.partition("/")[0] or "local")
                for m in self.served()
            ]
        )

    async def embeddings(self, request: OpenAIEmbeddingRequest) -> OpenAIEmbeddingResponse:
        model = self._model(request.model)
        texts = self._texts(request.input)
        if request.dimensions is not None and request.dimensions != model.dimension:
            raise ApiError(
                ErrorCode.UNSUPPORTED_PARAMETER,
                f"dimensions {request.dimensions} is not supported: {model.model_id} was not trained to give "
                f"shortened vectors; leave dimensions out (or send {model.dimension})",
                param="dimensions",
            )
        embedded = await self.embedder.embed_texts(model, texts, normalize=True, truncate=True)
        return OpenAIEmbeddingResponse(
            data=[
                OpenAIEmbedding(index=i, embedding=vector)
                for i, vector in enumerate(encode_vectors(embedded.vectors, request.encoding_format))
            ],
            model=model.model_id,
            usage=OpenAIUsage(prompt_tokens=embedded.tokens, total_tokens=embedded.tokens),
        )

    def _model(self, name: str) -> Model:
        """The model that `name` means: its Hugging Face id or the part after the slash, in any case."""
        wanted = name.lower()
        for model in self.served():
            model_id = model.model_id.lower()
            if wanted in (model_id, model_id.rpartition("/")[2]):
                return model
        available = ", ".join(m.model_id for m in self.served()) or "none"
        raise ApiError(
            ErrorCode.MODEL_NOT_FOUND, f"model {name!r} is not served here (available: {available})", param="model"
        )

    def _texts(self, input: str | list) -> list[str]:
        texts = [input] if isinstance(input, str) else input
        not_text = next((index for index, text in enumerate(texts) if not isinstance(text, str)), None)
        if not_text is not None:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"input {not_text} is not a text: token ids from another tokenizer mean nothing to this model",
                not_text,
                param="input",
            )
        check_item_count(len(texts), "texts", param="input")
        for index, text in enumerate(texts):
            check_text_length(text, index, param="input")
        return texts
