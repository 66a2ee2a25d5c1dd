"""`multipart/form-data` uploads on /embed/image and /embed/batch: the files' own bytes, without base64's third more.

/embed/image: every file part is an image, in order.
/embed/batch: every part is an item whose id is the part's name: a file part is an image (a text file, by its
`text/*` content type, is a text item), a plain field is a text item.
Both: a plain field named `options` may hold the JSON body's other fields, e.g. `{"normalize": false, "encoding":
"base64"}`. Limits, errors and answers are those of the JSON form.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from embedding_server.core import Embedder
from embedding_server.errors import ApiError, ErrorCode, from_validation_errors
from embedding_server.schemas import BatchItem, EmbedBatchRequest, EmbedImageRequest, UploadOptions
from embedding_server.settings import Settings

OPTIONS_FIELD = "options"


class UploadMiddleware:
    """Serves the multipart form of the upload routes; any other request goes on to BentoML's JSON handlers."""

    def __init__(self, app: ASGIApp, embedder: Callable[[], Embedder]) -> None:
        self.app = app
        self.embedder = embedder
        self.routes: dict[str, Callable[[Embedder, FormData], Awaitable[object]]] = {
            "/embed/image": embed_image_upload,
            "/embed/batch": embed_batch_upload,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        request = Request(scope, receive) if route is not None else None
        if request is None or not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            await self.app(scope, receive, send)
            return
        embedder = self.embedder()
        try:
            async with read_form(request, embedder.settings) as form:
                answer = await route(embedder, form)
            response = JSONResponse(answer.model_dump())
        except ApiError as error:
            response = error.to_response()
        await response(scope, receive, send)


class read_form:  # noqa: N801 - used as `async with read_form(...)`, like a function
    """The request's form, parsed within the request limits; its spooled files are closed on exit."""

    def __init__(self, request: Request, settings: Settings) -> None:
        self.request = request
        self.settings = settings

    async def __aenter__(self) -> FormData:
        limit = self.settings.max_items_per_request
        try:
            self.form = await self.request.form(
                max_files=limit,
                max_fields=limit + 1,  # the items and `options`
                # A text field holds at most max_text_chars characters of up to 4 UTF-8 bytes each.
                max_part_size=4 * self.settings.max_text_chars + 1024,
            )
        except (MultiPartException, HTTPException) as exc:
            message = exc.detail if isinstance(exc, HTTPException) else exc.message
            if message.startswith("Too many"):
                raise ApiError(ErrorCode.TOO_MANY_ITEMS, f"the upload has more than {limit} items") from None
            raise ApiError(ErrorCode.INVALID_UPLOAD, f"multipart body cannot be read: {message}") from None
        return self.form

    async def __aexit__(self, *_) -> None:
        await self.form.close()


async def embed_image_upload(embedder: Embedder, form: FormData):
    options = upload_options(form)
    images = []
    for index, (name, value) in enumerate(part for part in form.multi_items() if part[0] != OPTIONS_FIELD):
        if not isinstance(value, UploadFile):
            raise ApiError(ErrorCode.INVALID_UPLOAD, f"part {name!r} is not a file: send each image as a file", index)
        images.append(await value.read())
    check_count(len(images), embedder.settings)
    # model_construct: the images are the files' bytes, which decode_image takes as they are.
    return await embedder.embed_image(
        EmbedImageRequest.model_construct(images=images, normalize=options.normalize, encoding=options.encoding)
    )


async def embed_batch_upload(embedder: Embedder, form: FormData):
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
    check_count(len(items), embedder.settings)
    return await embedder.embed_batch(
        EmbedBatchRequest.model_construct(
            items=items, normalize=options.normalize, truncate=options.truncate, encoding=options.encoding
        )
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


def check_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise ApiError(ErrorCode.EMPTY_INPUT, "the upload has no items")
    if count > settings.max_items_per_request:
        raise ApiError(ErrorCode.TOO_MANY_ITEMS, f"{count} items, more than {settings.max_items_per_request}")
