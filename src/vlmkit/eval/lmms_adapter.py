"""An lmms-eval model backed by vlmkit, so lmms-eval's task zoo can run on any vlmkit model (optional extra).

This module owns the translation from lmms-eval's `generate_until` requests to the vlmkit generation engine:
each request's `args` are `(context, gen_kwargs, doc_to_visual, doc_id, task, split)`; the images are
`doc_to_visual(task_dict[task][split][doc_id])` (PIL images; videos are not supported), the context becomes
one user message (its `<image>` markers, if any, place the images; otherwise the chat template does),
`gen_kwargs` become a `GenerationConfig` (`until` -> stop strings, `max_new_tokens`, `temperature` > 0 ->
sampling, `top_p`). Requests with equal settings are batched; answers come back in request order.

lmms-eval is imported only when the model class is asked for (`VlmkitLMM`, `model_class()`, `register()`);
without it those raise a `VlmkitError` saying how to install it. Use it with lmms-eval's Python API
(`simple_evaluate(model=VlmkitLMM(pretrained="runs/x/final"), tasks=[...])`), or call `register()` first to
make `--model vlmkit` known to its registry in the same process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image

from ..errors import VlmkitError
from ..generation import Engine, GenerationConfig, Request

MODEL_NAME = "vlmkit"
DEFAULT_MAX_NEW_TOKENS = 1024  # lmms-eval's default when a task gives none


def require_lmms_eval() -> Any:
    """The `lmms_eval` package, or a clear error when it is not installed."""
    try:
        import lmms_eval  # noqa: PLC0415 - optional dependency, imported on use
    except ImportError:
        raise VlmkitError("lmms-eval is not installed: `pip install lmms-eval` to use vlmkit models from it "
                          "(vlmkit's own `vlmkit eval` needs nothing extra)") from None
    return lmms_eval


# ------------------------------------------------------------------------------------------- translation
def generation_config(gen_kwargs: Mapping[str, Any]) -> GenerationConfig:
    """lmms-eval generation kwargs -> `GenerationConfig` (greedy unless temperature > 0)."""
    until = gen_kwargs.get("until") or []
    stops = [until] if isinstance(until, str) else list(until)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    top_p = gen_kwargs.get("top_p")
    sample = temperature > 0
    return GenerationConfig(
        max_new_tokens=int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
        do_sample=sample, temperature=temperature if sample else 1.0,
        top_p=float(top_p) if sample and top_p is not None else 1.0,
        stop_strings=tuple(s for s in stops if s))


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [v for x in visuals for v in _flatten(x)]
    return [visuals]


def to_request(context: str, visuals: Any) -> Request:
    """One lmms-eval context and its visuals -> an engine `Request`."""
    images = _flatten(visuals)
    bad = [type(v).__name__ for v in images if not isinstance(v, Image.Image)]
    if bad:
        raise VlmkitError(f"vlmkit's lmms-eval model takes images only; got {bad[0]} (video tasks are unsupported)")
    return Request([{"role": "user", "content": context}], images)


def generate_until(engine: Engine, requests: Sequence[Any], task_dict: Mapping[str, Any],
                   batch_size: int = 1) -> list[str]:
    """Answers to lmms-eval `generate_until` requests, in request order."""
    groups: dict[GenerationConfig, list[int]] = {}
    parsed: list[Request] = []
    for i, req in enumerate(requests):
        context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
        parsed.append(to_request(context, doc_to_visual(task_dict[task][split][doc_id])))
        groups.setdefault(generation_config(dict(gen_kwargs or {})), []).append(i)
    answers: list[str] = [""] * len(parsed)
    for config, indices in groups.items():
        results = engine.generate([parsed[i] for i in indices], config, batch_size=max(1, int(batch_size)))
        for i, r in zip(indices, results):
            answers[i] = r.text
    return answers


# ------------------------------------------------------------------------------------------------ classes
def model_class() -> type:
    """Define (once) and return the lmms-eval model class; needs lmms-eval installed."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    require_lmms_eval()
    from lmms_eval.api.model import lmms  # noqa: PLC0415

    class VlmkitLMM(lmms):
        """lmms-eval model over a vlmkit model directory or preset (`pretrained=`)."""

        def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 1,
                     **kwargs: Any) -> None:
            super().__init__()
            if kwargs:
                raise VlmkitError(f"unknown vlmkit model argument(s): {', '.join(sorted(kwargs))}")
            from ..cli.ask import resolve_model  # noqa: PLC0415 - the CLI's model resolution

            model, processor = resolve_model(pretrained, device)
            self.engine = Engine(model, processor)
            self.batch_size_per_gpu = int(batch_size)

        def generate_until(self, requests: list) -> list[str]:
            return generate_until(self.engine, requests, self.task_dict, self.batch_size_per_gpu)

        def loglikelihood(self, requests: list) -> list:
            raise NotImplementedError("vlmkit's lmms-eval model supports generate_until tasks only")

        def generate_until_multi_round(self, requests: list) -> list[str]:
            raise NotImplementedError("vlmkit's lmms-eval model does not support multi-round generation")

    _CLASS = VlmkitLMM
    return _CLASS


_CLASS: type | None = None


def register() -> None:
    """Make `--model vlmkit` / `get_model("vlmkit")` resolve to `VlmkitLMM` in this process."""
    cls = model_class()
    from lmms_eval.models import MODEL_REGISTRY_V2  # noqa: PLC0415
    from lmms_eval.models.registry_v2 import ModelManifest  # noqa: PLC0415

    MODEL_REGISTRY_V2.register_manifest(
        ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.{cls.__name__}"), overwrite=True)


def __getattr__(name: str) -> Callable[..., Any] | type:
    if name == "VlmkitLMM":  # lazy: `from vlmkit.eval.lmms_adapter import VlmkitLMM` imports lmms-eval
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
