"""Generation: the one decoding engine every front end uses, chat sessions, sampling settings, grounding boxes."""

from .engine import Engine, Request, Result, default_model_dir
from .grounding import Box, draw_boxes, format_cogvlm_box, parse_boxes
from .sampling import GenerationConfig, TokenChooser
from .session import ChatSession

__all__ = [
    "Box", "ChatSession", "Engine", "GenerationConfig", "Request", "Result", "TokenChooser", "default_model_dir",
    "draw_boxes", "format_cogvlm_box", "parse_boxes",
]
