"""Interoperability with other model formats (transformers LLaVA, ...)."""
