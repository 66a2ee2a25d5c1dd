"""`multipart/form-data` uploads on /embed/image and /embed/batch: the files' own bytes, without base64's third more.

/embed/image: every file part is an image, in order.
/embed/batch: every part is an item whose id is the part's name: a file part is an image (a text file, by its
`text/*` content type, is a text item), a plain field is a text item.
Both: a plain field named `options` may hold the JSON body's other fields, e.g. `{"normalize": false, "encoding":
"base64"}`. Limits, errors and answers are those of the JSON form.

Each form here turns a parsed form into the route's request; routes.py says which route takes which.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from embedding_server import limits
from embedding_server.errors import ApiError, ErrorCode, from_validation_errors
from embedding_server.schemas import BatchItem, EmbedBatchRequest, EmbedImageRequest, UploadOptions

OPTIONS_FIELD = "options"
_OPTIONS_SCHEMA = {
    "type": "string",
    "description": 'The JSON body\'s other fields as JSON, e.g. {"normalize": false, "encoding": "base64"}.',
}


@dataclass(frozen=True)
class UploadForm:
    """How one route reads a multipart form: into its request, and as the OpenAPI document describes it."""

    to_request: Callable[[FormData], Awaitable[Any]]
    schema: dict[str, Any]


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


class read_form:  # noqa: N801 - used as `async with read_form(...)`, like a function
    """The request's form, parsed within the request limits; its spooled files are closed on exit."""

    def __init__(self, request: Request) -> None:
        self.request = request

    async def __aenter__(self) -> FormData:
        limit = limits.max_items()
        try:
            self.form = await self.request.form(
                max_files=limit, max_fields=limit + 1, max_part_size=limits.max_form_part_bytes()
            )  # max_fields: the items and `options`
        except (MultiPartException, HTTPException) as exc:
            message = exc.detail if isinstance(exc, HTTPException) else exc.message
            if message.startswith("Too many"):
                raise ApiError(ErrorCode.TOO_MANY_ITEMS, f"the upload has more than {limit} items") from None
            raise ApiError(ErrorCode.INVALID_UPLOAD, f"multipart body cannot be read: {message}") from None
        return self.form

    async def __aexit__(self, *_) -> None:
        await self.form.close()


async def image_request(form: FormData) -> EmbedImageRequest:
    options = upload_options(form)
    images = []
    for index, (name, value) in enumerate(part for part in form.multi_items() if part[0] != OPTIONS_FIELD):
        if not isinstance(value, UploadFile):
            raise ApiError(ErrorCode.INVALID_UPLOAD, f"part {name!r} is not a file: send each image as a file", index)
        images.append(await value.read())
    limits.check_item_count(len(images), "images in the upload")
    # model_construct: the images are the files' bytes, which decode_image takes as they are.
    return EmbedImageRequest.model_construct(images=images, normalize=options.normalize, encoding=options.encoding)


async def batch_request(form: FormData) -> EmbedBatchRequest:
    options = upload_options(form)
    items = []
    for name, value in form.multi_items():
        if name == OPTIONS_FIELD:
            continue
        check_id(name, len(items))
        if isinstance(value, str):
            items.append(BatchItem.model_construct(id=name, type="text", content=value))
        else:
            # model_construct: a file item's content is its bytes (a text file's are decoded, and checked, as the
            # item is prepared, so that a file that is not UTF-8 fails alone).
            kind = "text" if (value.content_type or "").startswith("text/") else "image"
            items.append(BatchItem.model_construct(id=name, type=kind, content=await value.read()))
    limits.check_item_count(len(items), "items in the upload")
    return EmbedBatchRequest.model_construct(
        items=items, normalize=options.normalize, truncate=options.truncate, encoding=options.encoding
    )


def upload_options(form: FormData) -> UploadOptions:
    raw = form.get(OPTIONS_FIELD)
    if raw is None:
        return UploadOptions()
    if not isinstance(raw, str):
        raise ApiError(ErrorCode.INVALID_UPLOAD, f"the {OPTIONS_FIELD!r} part must be a plain field, not a file")
    try:
        return UploadOptions.model_validate_json(raw)
    except ValidationError as exc:
        error = from_validation_errors(exc.errors())
        raise ApiError(error.code, f"options part: {error.message}") from None


def check_id(name: str, index: int) -> None:
    """A part's name is the item's id, under the JSON form's rules for ids."""
    try:
        BatchItem(id=name, type="text", content="")
    except ValidationError as exc:
        reason = from_validation_errors(exc.errors()).message
        raise ApiError(ErrorCode.INVALID_UPLOAD, f"part {index}'s name is no valid item id ({reason})", index) from None


IMAGE_UPLOAD = UploadForm(
    image_request,
    {
        "type": "object",
        "required": ["images"],
        "properties": {
            "images": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": "Image files, in order (every file part is an image, whatever its name).",
            },
            OPTIONS_FIELD: _OPTIONS_SCHEMA,
        },
    },
)
BATCH_UPLOAD = UploadForm(
    batch_request,
    {
        "type": "object",
        "properties": {OPTIONS_FIELD: _OPTIONS_SCHEMA},
        "additionalProperties": {"type": "string", "format": "binary"},
        "description": "Every part is an item whose id is the part's name: a file is an image, a text/* file or a "
        "plain field a text.",
    },
)
