"""Serving: the OpenAI-compatible HTTP API, the VisualGLM-6B legacy endpoint and the Gradio web demo.

`create_app(model, processor, settings)` builds the FastAPI app (continuous batching through
`generation.scheduler`); `build_demo(...)` (in `serve.web`) builds the Gradio demo over `ChatSession`.
The heavy web dependencies (fastapi, uvicorn, gradio) are imported only by these modules; install them with
`pip install 'vlmkit[serve]'`.
"""

from typing import Any

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:  # lazy, so `import vlmkit.serve` works without fastapi installed
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
