"""Image inputs of API requests: data: URLs (always), http(s) and file:// URLs (only when enabled), opened safely.

Every image is checked from its header before any pixel is decoded (format allow-list, width x height against
the pixel limit, so decompression bombs are refused cheaply), then decoded fully so truncated or corrupt files
fail here with a 400 naming the parameter rather than later inside the model.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from .errors import APIError, bad_request
from .settings import ServeSettings

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


def image_from_url(url: str, settings: ServeSettings, param: str) -> Image.Image:
    """An OpenAI `image_url.url` -> RGB image; 4xx `APIError` for anything not allowed or not an image."""
    if not isinstance(url, str) or not url:
        raise bad_request("an image URL must be a non-empty string", param, "invalid_image_url")
    if url.startswith("data:"):
        return decode_image(data_url_bytes(url, param), settings.max_image_pixels, param)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        if not settings.allow_remote_images:
            raise bad_request("remote image URLs are disabled on this server: send the image inline as a "
                              "data:image/...;base64 URL (or start the server with --allow-remote-images)",
                              param, "image_url_not_allowed")
        return decode_image(_fetch(url, settings, param), settings.max_image_pixels, param)
    if scheme == "file":
        return decode_image(_local_file(url, settings, param), settings.max_image_pixels, param)
    raise bad_request(f"unsupported image URL scheme '{scheme or url[:16]}': use a data:image/...;base64 URL",
                      param, "invalid_image_url")


def data_url_bytes(url: str, param: str) -> bytes:
    """The payload of `data:image/<fmt>;base64,<data>`."""
    header, sep, payload = url.partition(",")
    media = header[5:].split(";")
    if not sep or "base64" not in media[1:]:
        raise bad_request("an image data URL must look like data:image/png;base64,<base64 data>", param,
                          "invalid_image_url")
    if media[0] and not media[0].lower().startswith("image/"):
        raise bad_request(f"the data URL has media type '{media[0]}', not an image", param, "invalid_image_url")
    return b64decode(payload, param)


def b64decode(payload: str, param: str) -> bytes:
    """Strict base64 (whitespace allowed); a 400 naming `param` when it is not valid base64."""
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the image is not valid base64", param, "invalid_base64") from None
    if not data:
        raise bad_request("the image data is empty", param, "invalid_image")
    return data


def decode_image(data: bytes, max_pixels: int, param: str) -> Image.Image:
    """Bytes -> RGB image: the size is checked from the header before decoding; corrupt data is a 400."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise _too_large(width, height, max_pixels, param)
                im.load()
                return im.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise bad_request(f"the image is too large to decode safely (limit {max_pixels} pixels)", param,
                              "image_too_large") from None
        except UnidentifiedImageError:
            raise bad_request(f"the data is not an image in a supported format ({', '.join(FORMATS)})", param,
                              "invalid_image") from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise bad_request(f"the image is corrupt or truncated ({' '.join(str(e).split())})", param,
                              "invalid_image") from None


def _too_large(width: int, height: int, max_pixels: int, param: str) -> APIError:
    return bad_request(f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                       "pixels: downscale it first", param, "image_too_large")


def _fetch(url: str, settings: ServeSettings, param: str) -> bytes:
    """GET a remote image with a timeout and the request-size limit on the body."""
    request = urllib.request.Request(url, headers={"User-Agent": "vlmkit-server"})
    try:
        with urllib.request.urlopen(request, timeout=settings.remote_timeout) as response:  # noqa: S310
            data = response.read(settings.max_request_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise bad_request(f"cannot fetch the image URL ({' '.join(str(e).split())})", param,
                          "image_fetch_failed") from None
    if len(data) > settings.max_request_bytes:
        raise bad_request(f"the remote image is larger than {settings.max_request_bytes} bytes", param,
                          "image_too_large")
    return data


def _local_file(url: str, settings: ServeSettings, param: str) -> bytes:
    """Read a file:// URL, only inside the allowed directory (symlinks resolved first)."""
    root = settings.local_image_dir
    if root is None:
        raise bad_request("local image files are disabled on this server (start it with --local-image-dir DIR)",
                          param, "image_url_not_allowed")
    path = Path(unquote(urlparse(url).path)).resolve()
    if not path.is_relative_to(root):
        raise bad_request(f"image files must be inside {root}", param, "image_url_not_allowed")
    if not path.is_file():
        raise bad_request(f"image file not found: {path}", param, "invalid_image_url")
    if path.stat().st_size > settings.max_request_bytes:
        raise bad_request(f"the image file is larger than {settings.max_request_bytes} bytes", param,
                          "image_too_large")
    return path.read_bytes()
