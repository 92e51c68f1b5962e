"""Data: the `Sample` shape, loaders for the formats users already have, validation, splits, synthetic sets."""

from .sample import DataError, Sample

__all__ = ["DataError", "Sample"]
