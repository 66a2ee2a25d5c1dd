"""Request and response bodies of the API. BentoML publishes these as the OpenAPI document, limits included."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, RootModel, model_serializer
from pydantic_core import PydanticCustomError

from embedding_server import limits
from embedding_server.errors import ApiError
from embedding_server.settings import get_settings


def _checked(check, validator=AfterValidator):
    """A limit check of `limits` as a pydantic validator: its ApiError as a pydantic error whose type is the code."""

    def validate(value):
        try:
            check(value)
        except ApiError as error:
            raise PydanticCustomError(error.code.value, error.message) from None
        return value

    return validator(validate)


def _documented(**bounds):
    """The limits in the JSON schema (the OpenAPI document), as they are when the document is made."""
    return lambda schema: schema.update({key: bound() for key, bound in bounds.items()})


def _image_list_description(schema: dict) -> None:
    schema["description"] = "data:image/...;base64,... URLs or bare base64 (PNG, JPEG, WebP, GIF, BMP, TIFF)." + (
        " Also http(s) URLs, which the server fetches (public addresses or its allowlist only, at most 3 redirects)."
        if get_settings().allow_image_urls
        else ""
    )
    schema["maxItems"] = limits.max_items()


Text = Annotated[
    str, _checked(limits.check_text_length), Field(json_schema_extra=_documented(maxLength=limits.max_text_chars))
]
# Before the items are validated: a list over the limit is refused as such, without a look at its items.
ItemCount = _checked(lambda items: isinstance(items, list) and limits.check_item_count(len(items)), BeforeValidator)
ItemList = Field(min_length=1, json_schema_extra=_documented(maxItems=limits.max_items))
Encoding = Literal["float", "base64"]
Vector = Annotated[
    list[float] | str,
    Field(description="The vector as numbers, or with encoding base64 its little-endian float32 bytes."),
]
ImageList = Field(min_length=1, json_schema_extra=_image_list_description)
EncodingField = Field(
    "float", description="float: vectors as JSON numbers; base64: each vector's little-endian float32 bytes in base64."
)


class RequestBody(BaseModel):
    """A request's body: pydantic's errors must not quote its content, which may be a user's private text."""

    model_config = ConfigDict(hide_input_in_errors=True)


class EmbedTextRequest(RequestBody):
    texts: Annotated[list[Text], ItemCount] = ItemList
    normalize: bool = Field(True, description="L2-normalise each vector.")
    truncate: bool = Field(True, description="Cut texts over the model's token limit; when false they are a 422.")
    encoding: Encoding = EncodingField


class EmbedImageRequest(RequestBody):
    images: Annotated[list[str], ItemCount] = ImageList
    normalize: bool = True
    encoding: Encoding = EncodingField


class BatchItem(RequestBody):
    id: str = Field(min_length=1, max_length=1024)
    type: Literal["text", "image"]
    content: str


class EmbedBatchRequest(RequestBody):
    items: Annotated[list[BatchItem], ItemCount] = ItemList
    normalize: bool = True
    truncate: bool = True
    encoding: Encoding = EncodingField


class ClassifyImageRequest(RequestBody):
    images: Annotated[list[str], ItemCount] = ImageList
    labels: Annotated[list[Text], ItemCount] = Field(
        min_length=1,
        json_schema_extra=_documented(maxItems=limits.max_items),
        description='Candidate labels, compared with each image as CLIP does; prompts such as "a photo of a cat" '
        "work better than bare words.",
    )
    top_k: int | None = Field(None, ge=1, description="Keep only the most probable labels of each image.")


class UploadOptions(RequestBody):
    """The `options` part of a multipart upload: the JSON body's fields other than the content."""

    model_config = ConfigDict(extra="forbid")

    normalize: bool = True
    truncate: bool = True
    encoding: Encoding = "float"


class EmbedTextMetadata(BaseModel):
    count: int
    dimension: int
    duration: float = Field(description="Server-side milliseconds of the request.")
    model: str
    truncated: list[int] = Field(description="Indexes of the texts that were cut to the model's token limit.")
    tokens: int = Field(description="Tokens embedded, special tokens included.")


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


def _embedding_or_error(schema: dict) -> None:
    """BatchResult's JSON schema as it is serialised: `embedding` or `error`, never null (the serializer drops the
    empty half)."""
    for name in ("embedding", "error"):
        field = schema["properties"][name]
        schema["properties"][name] = {**field.pop("anyOf")[0], **{k: v for k, v in field.items() if k != "default"}}
    schema["oneOf"] = [{"required": ["embedding"]}, {"required": ["error"]}]


class BatchResult(BaseModel):
    """One item's vector, or the error that kept it from having one."""

    model_config = ConfigDict(json_schema_extra=_embedding_or_error)

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


class LabelProbability(BaseModel):
    label: str
    probability: float


class ImageClassification(BaseModel):
    labels: list[LabelProbability] = Field(description="The labels, most probable first.")


class ClassifyImageMetadata(BaseModel):
    count: int
    duration: float
    model: str
    truncated: list[int] = Field(description="Indexes of the labels that were cut to CLIP's token limit.")


class ClassifyImageResponse(BaseModel):
    results: list[ImageClassification] = Field(description="One per image, in input order.")
    metadata: ClassifyImageMetadata


# --- OpenAI-compatible embeddings (/v1) ---------------------------------------------------------------------------


class OpenAIEmbeddingRequest(RequestBody):
    model: str = Field(description="A served model's id or short name (GET /v1/models).")
    # One list type for texts and token ids alike, so that a wrong element is named by our own check, with its index.
    input: str | list[str | int | list[int]] = Field(
        description="A text, a list of texts, or token-id arrays (a list of ids, or a list of such lists) of "
        "tiktoken's cl100k_base, as LangChain sends them: their text is embedded (unless DECODE_TOKEN_IDS is off)."
    )
    encoding_format: Encoding = "float"
    dimensions: int | None = Field(
        None, description="Only the model's own dimension: no model here was trained to be shortened."
    )
    user: str | None = None


class InfinityEmbeddingRequest(OpenAIEmbeddingRequest):
    """infinity's multimodal embeddings request: OpenAI's, with the kind of input."""

    modality: Literal["text", "image"] = Field(
        "text",
        description="image: `input` holds images (data URLs or base64, or image URLs where the server allows them).",
    )


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Vector


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable", "stopping"] = Field(
        description="ok: every configured model answers; unavailable: one does not; stopping: the server was asked "
        "to stop and finishes its requests (503, as /readyz)."
    )
    models: dict[str, bool] = Field(description="Each configured model: loaded and answering.")
    problems: dict[str, str] = Field(default_factory=dict, description="Why a model is not available.")
    memory: dict[str, float] = Field(description="Resident memory of this server's processes, in MB.")
    uptime: float = Field(description="Seconds since the API process started.")


# --- text-embeddings-inference (TEI) ------------------------------------------------------------------------------


class TeiEmbedRequest(RequestBody):
    """TEI's /embed (and `POST /`, where huggingface_hub's InferenceClient posts)."""

    inputs: str | list[str] = Field(description="A text or a list of texts.")
    normalize: bool = True
    truncate: bool | None = Field(None, description="Cut texts over the model's limit; else they are a 413.")
    truncation_direction: Literal["left", "right", "Left", "Right"] = Field(
        "right", description="Which end of a text over the limit is cut."
    )
    prompt_name: str | None = Field(None, description="None of the served models has prompts: only null.")
    dimensions: int | None = Field(None, description="Only the model's own dimension.")
    encoding_format: Encoding = "float"


class TeiTokenizeRequest(RequestBody):
    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class TeiToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TeiDecodeRequest(RequestBody):
    ids: list[int] | list[list[int]]
    skip_special_tokens: bool = True


class TeiSimilarityInput(BaseModel):
    source_sentence: str
    sentences: list[str]


class TeiSimilarityRequest(RequestBody):
    inputs: TeiSimilarityInput
    truncate: bool | None = None
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"
    prompt_name: str | None = None


class TeiEmbedResponse(RootModel[list[Vector]]):
    """One vector per input, in order."""


class TeiTokenizeResponse(RootModel[list[list[TeiToken]]]):
    """Each input's tokens."""


class TeiDecodeResponse(RootModel[list[str]]):
    """Each id list's text."""


class TeiSimilarityResponse(RootModel[list[float]]):
    """The cosine similarity of the source sentence with each sentence, in order."""


class TeiInfo(BaseModel):
    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: dict = Field(description='{"embedding": {"pooling": "mean"}}')
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None
