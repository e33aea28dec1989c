"""Model loading (embedded alias | local folder | hub id) and generation backends."""

from cada.models.generate import Generator, LocalGenerator, OpenAIGenerator, SamplingParams, make_generator
from cada.models.load import DEFAULT_MODEL, embedded_dir, load_model, resolve_model

__all__ = ["DEFAULT_MODEL", "Generator", "LocalGenerator", "OpenAIGenerator", "SamplingParams", "embedded_dir",
           "load_model", "make_generator", "resolve_model"]
