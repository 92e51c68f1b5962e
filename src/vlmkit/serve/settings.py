"""`ServeSettings`: every limit and switch of the HTTP server in one validated record (the CLI fills it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import VlmkitError


@dataclass(frozen=True)
class ServeSettings:
    """Server options.

    Fields:
        model_name: the id clients pass as `model` (and `GET /v1/models` lists).
        api_key: when set, every API call needs `Authorization: Bearer <api_key>`.
        max_batch: most requests decoded together (continuous batching).
        max_request_bytes: largest request body accepted (413 beyond).
        max_images: most images in one request.
        max_image_pixels: largest image (width x height), checked from the header before decoding.
        allow_remote_images: accept http(s) image URLs (fetched by the server); off by default.
        local_image_dir: accept file:// image URLs, only for files inside this directory; None = refused.
        remote_timeout: seconds for fetching one remote image.
        default_max_tokens: answer length when a request gives no max_tokens (capped by the context).
        max_n: most choices (`n`) per request.
    """

    model_name: str = "vlmkit"
    api_key: str | None = None
    max_batch: int = 8
    max_request_bytes: int = 32 * 2**20
    max_images: int = 4
    max_image_pixels: int = 4096 * 4096
    allow_remote_images: bool = False
    local_image_dir: Path | None = None
    remote_timeout: float = 10.0
    default_max_tokens: int = 512
    max_n: int = 8

    def __post_init__(self) -> None:
        positive = ("max_batch", "max_request_bytes", "max_image_pixels", "default_max_tokens", "max_n")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise VlmkitError(f"{name}={value!r}; it must be an integer >= 1")
        if not isinstance(self.max_images, int) or self.max_images < 0:
            raise VlmkitError(f"max_images={self.max_images!r}; it must be an integer >= 0")
        if not self.model_name:
            raise VlmkitError("the served model name must not be empty")
        if self.local_image_dir is not None:
            root = Path(self.local_image_dir).expanduser().resolve()
            if not root.is_dir():
                raise VlmkitError(f"the local image directory {root} does not exist")
            object.__setattr__(self, "local_image_dir", root)
