"""Request and response bodies of the API. BentoML publishes these as the OpenAPI document, limits included."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_serializer

from embedding_server.settings import get_settings

_settings = get_settings()

Text = Annotated[str, Field(max_length=_settings.max_text_chars)]
ItemList = Field(min_length=1, max_length=_settings.max_items_per_request)
Vector = list[float]


class EmbedTextRequest(BaseModel):
    texts: list[Text] = ItemList
    normalize: bool = Field(True, description="L2-normalise each vector.")
    truncate: bool = Field(True, description="Cut texts over the model's token limit; when false they are a 422.")


class EmbedImageRequest(BaseModel):
    images: list[str] = Field(
        min_length=1,
        max_length=_settings.max_items_per_request,
        description="data:image/...;base64,... URLs or bare base64 (PNG, JPEG, WebP, GIF, BMP, TIFF).",
    )
    normalize: bool = True


class BatchItem(BaseModel):
    id: str = Field(min_length=1, max_length=1024)
    type: Literal["text", "image"]
    content: str


class EmbedBatchRequest(BaseModel):
    items: list[BatchItem] = ItemList
    normalize: bool = True
    truncate: bool = True


class EmbedTextMetadata(BaseModel):
    count: int
    dimension: int
    duration: float = Field(description="Server-side milliseconds of the request.")
    model: str
    truncated: list[int] = Field(description="Indexes of the texts that were cut to the model's token limit.")


class EmbedImageMetadata(BaseModel):
    count: int
    dimension: int
    duration: float
    model: str


class EmbedTextResponse(BaseModel):
    embeddings: list[Vector]
    metadata: EmbedTextMetadata


class EmbedImageResponse(BaseModel):
    embeddings: list[Vector]
    metadata: EmbedImageMetadata


class ItemError(BaseModel):
    code: str
    message: str


class BatchResult(BaseModel):
    """One item's vector, or the error that kept it from having one."""

    id: str
    embedding: Vector | None = None
    error: ItemError | None = None

    @model_serializer(mode="wrap")
    def _without_the_empty_half(self, handler):
        return {key: value for key, value in handler(self).items() if value is not None}


class EmbedBatchMetadata(BaseModel):
    total: int
    text: int
    image: int
    failed: int
    duration: float


class EmbedBatchResponse(BaseModel):
    results: list[BatchResult]
    metadata: EmbedBatchMetadata


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    models: dict[str, bool] = Field(description="Each configured model: loaded and answering.")
    problems: dict[str, str] = Field(default_factory=dict, description="Why a model is not available.")
    memory: dict[str, float] = Field(description="Resident memory of this server's processes, in MB.")
    uptime: float = Field(description="Seconds since the API process started.")
