"""Connectors from vision features to LM embeddings, one module each, all in the `CONNECTORS` registry."""

from . import (  # noqa: F401  (registers the connectors)
    concat_merge,
    conv_downsample,
    glu,
    linear,
    mlp,
    pixel_shuffle,
    qformer,
    resampler,
)
from .base import CONNECTORS, Connector, ConnectorContext, build_connector

__all__ = ["CONNECTORS", "Connector", "ConnectorContext", "build_connector"]
