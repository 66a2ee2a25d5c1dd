"""The request limits, each checked here and nowhere else: the JSON bodies' schemas, the multipart uploads and the
OpenAI route all call these checks, which read the settings when they run (not when a module is imported)."""

from __future__ import annotations

from embedding_server.errors import ApiError, ErrorCode
from embedding_server.settings import get_settings


def check_item_count(count: int, what: str = "items", param: str | None = None) -> None:
    """At least one item and at most MAX_ITEMS_PER_REQUEST."""
    limit = get_settings().max_items_per_request
    if count == 0:
        raise ApiError(ErrorCode.EMPTY_INPUT, f"no {what}", param=param)
    if count > limit:
        raise ApiError(ErrorCode.TOO_MANY_ITEMS, f"{count} {what}, more than {limit}", param=param)


def check_text_length(text: str, index: int | None = None, param: str | None = None) -> None:
    """At most MAX_TEXT_CHARS characters."""
    limit = get_settings().max_text_chars
    if len(text) > limit:
        which = "text" if index is None else f"text {index}"
        raise ApiError(
            ErrorCode.TEXT_TOO_LONG, f"{which} has {len(text)} characters, more than {limit}", index, param=param
        )


def max_items() -> int:
    return get_settings().max_items_per_request


def max_text_chars() -> int:
    return get_settings().max_text_chars


def max_form_part_bytes() -> int:
    """The largest part of a multipart upload: a text field holds at most MAX_TEXT_CHARS characters of up to 4 UTF-8
    bytes each (an image file part is limited by MAX_IMAGE_BYTES as it is decoded)."""
    return 4 * max_text_chars() + 1024
