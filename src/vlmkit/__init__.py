"""vlmkit: build, train, evaluate and serve vision-language models (vision encoder x connector x causal LM).

    import vlmkit
    model, processor = vlmkit.build("llava-tiny")
    batch = processor(images=[img], text="<image>\\nWhat is this?", template="vicuna")
    out = model(**batch, labels=batch["labels"])
"""

__version__ = "0.1.0"

import logging as _logging  # noqa: E402

# bitsandbytes (imported by peft) warns on every start that it cannot fetch an optional CPU kernel from the Hub;
# vlmkit never downloads at run time and the fallback kernel is used, so the warning is only noise.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

from .api import build, list_presets, load, save  # noqa: E402
from .config import ConnectorConfig, LanguageConfig, VisionConfig, VLMConfig  # noqa: E402
from .constants import IGNORE_INDEX, IMAGE_TOKEN  # noqa: E402
from .errors import ConfigError, VlmkitError  # noqa: E402
from .models.vlm import VLMModel  # noqa: E402
from .processing import VLMProcessor  # noqa: E402

__all__ = [
    "IGNORE_INDEX", "IMAGE_TOKEN", "ConfigError", "ConnectorConfig", "LanguageConfig", "VLMConfig",
    "VLMModel", "VLMProcessor", "VisionConfig", "VlmkitError", "build", "list_presets", "load", "save",
    "__version__",
]
