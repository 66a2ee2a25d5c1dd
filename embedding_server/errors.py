"""The one error type of the API, its codes and their HTTP statuses, mapped in one place."""

from __future__ import annotations

from enum import Enum
from http import HTTPStatus
from typing import Literal

from starlette.responses import JSONResponse

from embedding_server.observability import record_error


class ErrorCode(str, Enum):
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    MISSING_FIELD = "missing_field"
    EMPTY_INPUT = "empty_input"
    TOO_MANY_ITEMS = "too_many_items"
    TEXT_TOO_LONG = "text_too_long"
    NOT_UTF8 = "not_utf8"
    TOO_MANY_TOKENS = "too_many_tokens"
    UNKNOWN_ITEM_TYPE = "unknown_item_type"
    DUPLICATE_ID = "duplicate_id"
    INVALID_BASE64 = "invalid_base64"
    IMAGE_URL_DISABLED = "image_url_disabled"
    INVALID_IMAGE_URL = "invalid_image_url"
    IMAGE_URL_NOT_ALLOWED = "image_url_not_allowed"
    IMAGE_FETCH_FAILED = "image_fetch_failed"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED_IMAGE = "truncated_image"
    IMAGE_TOO_LARGE = "image_too_large"
    REQUEST_TOO_LARGE = "request_too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    MODEL_UNAVAILABLE = "model_unavailable"
    MODEL_ERROR = "model_error"
    OVERLOADED = "overloaded"
    REQUEST_TIMEOUT = "request_timeout"
    MODEL_NOT_FOUND = "model_not_found"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    INVALID_UPLOAD = "invalid_upload"
    UNAUTHORIZED = "unauthorized"
    INTERNAL_ERROR = "internal_error"
    INVALID_TOKEN_IDS = "invalid_token_ids"


STATUS: dict[ErrorCode, HTTPStatus] = {
    ErrorCode.INVALID_JSON: HTTPStatus.BAD_REQUEST,
    ErrorCode.IMAGE_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.IMAGE_FETCH_FAILED: HTTPStatus.BAD_GATEWAY,  # the remote named by an image URL failed, not the request
    ErrorCode.REQUEST_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.TOO_MANY_PIXELS: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.MODEL_UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.MODEL_ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
    ErrorCode.OVERLOADED: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.REQUEST_TIMEOUT: HTTPStatus.GATEWAY_TIMEOUT,
    ErrorCode.MODEL_NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.INTERNAL_ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
}
"""Codes not listed here are 422: the request was JSON but its content can't be embedded."""

ErrorBody = Literal["api", "openai", "tei"]
"""Which error body a route answers with: this API's, OpenAI's (/v1), or text-embeddings-inference's (its routes)."""

_TEI_ERRORS: dict[ErrorCode, tuple[HTTPStatus, str]] = {
    # TEI answers an input over a limit (too many inputs, too long) with 413 "Validation", an empty batch with 400.
    **dict.fromkeys(
        (
            ErrorCode.TOO_MANY_ITEMS,
            ErrorCode.TEXT_TOO_LONG,
            ErrorCode.TOO_MANY_TOKENS,
            ErrorCode.REQUEST_TOO_LARGE,
            ErrorCode.IMAGE_TOO_LARGE,
            ErrorCode.TOO_MANY_PIXELS,
        ),
        (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Validation"),
    ),
    ErrorCode.EMPTY_INPUT: (HTTPStatus.BAD_REQUEST, "Empty"),
    ErrorCode.OVERLOADED: (HTTPStatus.TOO_MANY_REQUESTS, "Overloaded"),
    ErrorCode.MODEL_UNAVAILABLE: (HTTPStatus.SERVICE_UNAVAILABLE, "Unhealthy"),
    ErrorCode.MODEL_ERROR: (HTTPStatus.FAILED_DEPENDENCY, "Backend"),
    ErrorCode.INTERNAL_ERROR: (HTTPStatus.FAILED_DEPENDENCY, "Backend"),
    ErrorCode.REQUEST_TIMEOUT: (HTTPStatus.GATEWAY_TIMEOUT, "Backend"),
    ErrorCode.UNAUTHORIZED: (HTTPStatus.UNAUTHORIZED, "Unauthorized"),
    ErrorCode.INVALID_JSON: (HTTPStatus.UNPROCESSABLE_ENTITY, "Validation"),
}
_TEI_DEFAULT = (HTTPStatus.UNPROCESSABLE_ENTITY, "Validation")
TEI_ERROR_TYPES = sorted({error_type for _, error_type in (*_TEI_ERRORS.values(), _TEI_DEFAULT)})


def status_for(code: ErrorCode, flavour: ErrorBody = "api") -> HTTPStatus:
    """The HTTP status of an error with `code` on a route whose error body is `flavour`."""
    if flavour == "tei":
        return _TEI_ERRORS.get(code, _TEI_DEFAULT)[0]
    return STATUS.get(code, HTTPStatus.UNPROCESSABLE_ENTITY)


class ApiError(Exception):
    """A request (or one item of it) that can't be served; `index` names the offending item when there is one."""

    def __init__(self, code: ErrorCode, message: str, index: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.index = index
        self.param = param
        """The request field at fault, for the OpenAI error body."""

    @property
    def status(self) -> HTTPStatus:
        return status_for(self.code)

    def tei_body(self) -> dict:
        """text-embeddings-inference's error body, for its routes: `error_type` as TEI names it."""
        return {"error": self.message, "error_type": _TEI_ERRORS.get(self.code, _TEI_DEFAULT)[1]}

    def body(self) -> dict:
        detail = {"code": self.code.value, "message": self.message}
        if self.index is not None:
            detail["index"] = self.index
        return {"error": detail}

    def openai_body(self) -> dict:
        """The error body of the OpenAI API, for the /v1 routes."""
        return {
            "error": {
                "message": self.message,
                "type": _OPENAI_TYPES.get(
                    self.status, "server_error" if self.status >= 500 else "invalid_request_error"
                ),
                "param": self.param,
                "code": self.code.value,
            }
        }

    def to_response(self, flavour: ErrorBody = "api") -> JSONResponse:
        headers = {}
        if self.status == HTTPStatus.SERVICE_UNAVAILABLE:
            # A full queue drains in about a second; a model service that is down takes longer to come back.
            headers["Retry-After"] = "1" if self.code is ErrorCode.OVERLOADED else "5"
        elif self.status == HTTPStatus.UNAUTHORIZED:
            headers["WWW-Authenticate"] = "Bearer"
        body = {"api": self.body, "openai": self.openai_body, "tei": self.tei_body}[flavour]()
        record_error(self.code.value)
        return JSONResponse(body, status_code=status_for(self.code, flavour), headers=headers)


_OPENAI_TYPES = {HTTPStatus.UNAUTHORIZED: "authentication_error"}


# pydantic's error types when a body does not fit the schema, and the code each one means; a limit of `limits.py`
# reports its own code as the type.
_VALIDATION_CODES = {
    "json_invalid": ErrorCode.INVALID_JSON,
    "json_type": ErrorCode.INVALID_JSON,
    "missing": ErrorCode.MISSING_FIELD,
    "too_short": ErrorCode.EMPTY_INPUT,
    "too_long": ErrorCode.TOO_MANY_ITEMS,
    "string_too_long": ErrorCode.TEXT_TOO_LONG,
    **{code.value: code for code in ErrorCode},
}


def from_validation_errors(errors: list[dict]) -> ApiError:
    """The first of pydantic's errors as an ApiError; the first integer in its location is the item's index."""
    first = errors[0] if errors else {"type": "", "loc": [], "msg": "invalid request"}
    loc = [part for part in first.get("loc", []) if part != "body"]
    code = _VALIDATION_CODES.get(first.get("type", ""), ErrorCode.INVALID_REQUEST)
    if first.get("type") == "literal_error" and loc and loc[-1] == "type":
        code = ErrorCode.UNKNOWN_ITEM_TYPE
    index = next((part for part in loc if isinstance(part, int)), None)
    where = ".".join(str(part) for part in loc)
    message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return ApiError(code, message, index, param=str(loc[0]) if loc else None)
