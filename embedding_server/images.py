"""Image content from a request (data URL, bare base64 or uploaded bytes) to a decoded, upright PIL image, within the
limits."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from embedding_server.errors import ApiError, ErrorCode

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_WHITESPACE = re.compile(rb"\s+")


def decode_image(
    content: str | bytes, max_bytes: int, max_pixels: int, index: int | None = None, min_side: int = 0
) -> Image.Image:
    """Decodes `data:image/...;base64,...`, bare base64, or (as bytes) an uploaded file into a fully loaded image,
    EXIF orientation applied.

    `min_side` is the shortest side the model's pre-processing scales every image to. With it, a JPEG is decoded at
    the smallest of its reduced scales (1/2, 1/4, 1/8) that keeps both sides at least `min_side` pixels: several
    times cheaper, and the pre-processing shrinks it to that size anyway; and an image so elongated that it would
    have more than `max_pixels` pixels at that scale is refused.

    Raises ApiError (naming `index`) for bad base64, bytes that are no accepted image, a truncated file, more than
    `max_bytes` of image or more than `max_pixels` pixels; the pixel check comes before the pixels are decoded.
    """
    data = (
        _decode_base64(content, max_bytes, index)
        if isinstance(content, str)
        else _checked_size(content, max_bytes, index)
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(ErrorCode.TOO_MANY_PIXELS, f"image has more than {max_pixels} pixels", index) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(
            ErrorCode.NOT_AN_IMAGE,
            f"content is not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})",
            index,
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(ErrorCode.TOO_MANY_PIXELS, f"image is {width}x{height}, more than {max_pixels} pixels", index)
    # The model's pre-processing scales the shortest side to `min_side` before it crops the centre: a 1x1,000,000
    # strip (a few KB of PNG) would become 224x224,000,000 pixels, tens of GB.
    if min_side and min_side * min_side * max(width, height) > max_pixels * min(width, height):
        raise ApiError(
            ErrorCode.TOO_MANY_PIXELS,
            f"image is {width}x{height}: scaled to a shortest side of {min_side} pixels for the model it would have "
            f"more than {max_pixels} pixels",
            index,
        )
    if min_side and isinstance(image, JpegImageFile):  # MPO, what many cameras write, is a JPEG too
        image.draft("RGB", (min_side, min_side))
    try:
        image.load()  # the first frame only, for animated GIF/WebP/TIFF
    except OSError as exc:
        code = ErrorCode.TRUNCATED_IMAGE if "truncated" in str(exc) else ErrorCode.NOT_AN_IMAGE
        raise ApiError(code, f"{image.format} image cannot be decoded: {exc}", index) from None
    except Exception as exc:  # PIL's decoders raise a zoo of types on corrupt data
        raise ApiError(ErrorCode.NOT_AN_IMAGE, f"{image.format} image cannot be decoded: {exc}", index) from None
    return _upright(image)


def _decode_base64(content: str, max_bytes: int, index: int | None) -> bytes:
    payload = content
    if content.startswith("data:"):
        header, sep, payload = content.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(ErrorCode.INVALID_BASE64, "data URL must be of the form data:<type>;base64,<data>", index)
    raw = _WHITESPACE.sub(b"", payload.encode("ascii", errors="replace"))
    if len(raw) * 3 // 4 > max_bytes + 2:  # checked before decoding, so that no oversized buffer is ever made
        raise ApiError(ErrorCode.IMAGE_TOO_LARGE, f"image is larger than {max_bytes} bytes", index)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            ErrorCode.INVALID_BASE64, "content is neither a base64 data URL nor valid base64", index
        ) from None
    return _checked_size(data, max_bytes, index)


def _checked_size(data: bytes, max_bytes: int, index: int | None) -> bytes:
    if len(data) > max_bytes:
        raise ApiError(ErrorCode.IMAGE_TOO_LARGE, f"image is {len(data)} bytes, more than {max_bytes}", index)
    if not data:
        raise ApiError(ErrorCode.NOT_AN_IMAGE, "image content is empty", index)
    return data


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; an unreadable EXIF block leaves it as it is."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image
