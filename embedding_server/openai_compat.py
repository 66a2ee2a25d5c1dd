"""The OpenAI embeddings API (`POST /v1/embeddings`, `GET /v1/models`) on top of the Embedder, for the clients and
tools that already speak it; and infinity's multimodal form of it (`POST /embeddings` with `modality`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np

from embedding_server.errors import ApiError, ErrorCode
from embedding_server.limits import check_item_count, check_text_length
from embedding_server.model_store import hub_model_id
from embedding_server.schemas import (
    InfinityEmbeddingRequest,
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
    OpenAIUsage,
)
from embedding_server.served_model import Model
from embedding_server.token_ids import Cl100kDecoder, UndecodableIds
from embedding_server.wire import encode_vectors

if TYPE_CHECKING:  # the Embedder holds this object: a run-time import would be circular
    from embedding_server.embedder import Embedder


class OpenAIEmbeddings:
    """Routes an OpenAI request by `model` to the text model or to CLIP's text tower (CLIP's image tower for
    infinity's `modality: image`)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def served(self, modality: str = "text") -> list[Model]:
        """The models that embed `modality`, as far as the store knows (a model service that is down still counts)."""
        models = (self.embedder.image,) if modality == "image" else (self.embedder.text, self.embedder.image_text)
        return [m for m in models if m.enabled and m.problem is None]

    def models(self) -> OpenAIModelList:
        return OpenAIModelList(
            data=[
                OpenAIModel(id=m.model_id, created=m.created, owned_by=m.model_id.partition("/")[0] or "local")
                for m in self.served()
            ]
        )

    async def embeddings(self, request: OpenAIEmbeddingRequest) -> OpenAIEmbeddingResponse:
        modality = request.modality if isinstance(request, InfinityEmbeddingRequest) else "text"
        model = self._model(request.model, modality)
        if request.dimensions is not None and request.dimensions != model.dimension:
            raise ApiError(
                ErrorCode.UNSUPPORTED_PARAMETER,
                f"dimensions {request.dimensions} is not supported: {model.model_id} was not trained to give "
                f"shortened vectors; leave dimensions out (or send {model.dimension})",
                param="dimensions",
            )
        if modality == "image":
            vectors, tokens = await self._images(request.input), 0
        else:
            texts = await self._texts(request.input)
            embedded = await self.embedder.embed_texts(model, texts, normalize=True, truncate=True)
            vectors, tokens = embedded.vectors, embedded.tokens
        return OpenAIEmbeddingResponse(
            data=[
                OpenAIEmbedding(index=i, embedding=vector)
                for i, vector in enumerate(encode_vectors(vectors, request.encoding_format))
            ],
            model=model.model_id,
            usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    def _model(self, name: str, modality: str) -> Model:
        """The model that `name` means: its id or the part after the slash, in any case (for a transformers.js
        conversion, the id of the model it was converted from too)."""
        wanted = name.lower()
        for model in self.served(modality):
            names = {model_id.lower() for model_id in (model.model_id, hub_model_id(model.model_id))}
            if wanted in names | {model_id.rpartition("/")[2] for model_id in names}:
                return model
        available = ", ".join(m.model_id for m in self.served(modality)) or "none"
        raise ApiError(
            ErrorCode.MODEL_NOT_FOUND,
            f"model {name!r} does not embed {modality} here (available: {available})",
            param="model",
        )

    async def _texts(self, input: str | list) -> list[str]:
        """The texts of `input`: strings, or token-id arrays decoded as cl100k_base (a flat list of ids is one
        text), each within the limits."""
        if isinstance(input, str):
            texts: list = [input]
        elif input and all(isinstance(item, int) for item in input):
            texts = [input]
        else:
            texts = input
        if any(not isinstance(text, str) for text in texts):
            texts = await asyncio.to_thread(self._decoded, texts)
        check_item_count(len(texts), "texts", param="input")
        for index, text in enumerate(texts):
            check_text_length(text, index, param="input")
        return texts

    def _decoded(self, texts: list) -> list[str]:
        decoder = Cl100kDecoder.packaged() if self.embedder.settings.decode_token_ids else None
        decoded = []
        for index, text in enumerate(texts):
            if isinstance(text, str):
                decoded.append(text)
                continue
            if decoder is None or not isinstance(text, list):
                raise ApiError(
                    ErrorCode.INVALID_REQUEST,
                    f"input {index} is not a text: token ids from another tokenizer mean nothing to this model"
                    + ("" if decoder is None else " (a list of token-id lists, or of texts, is)"),
                    index,
                    param="input",
                )
            try:
                decoded.append(decoder.decode(text))
            except UndecodableIds as exc:
                raise ApiError(ErrorCode.INVALID_TOKEN_IDS, f"input {index}: {exc}", index, param="input") from None
        return decoded

    async def _images(self, images: str | list) -> np.ndarray:
        images = [images] if isinstance(images, str) else images
        not_image = next((index for index, image in enumerate(images) if not isinstance(image, str)), None)
        if not_image is not None:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"input {not_image} is not an image: send data URLs or base64 (or URLs, where the server allows them)",
                not_image,
                param="input",
            )
        check_item_count(len(images), "images", param="input")
        return await self.embedder.embed_images(images, normalize=True)
