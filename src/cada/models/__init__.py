"""Model loading (embedded alias | local folder | hub id) and generation backends."""

from cada.models.generate import Generator, SamplingParams, make_generator
from cada.models.http import OpenAIGenerator
from cada.models.load import DEFAULT_MODEL, embedded_dir, load_model, resolve_model
from cada.models.local import LocalGenerator

__all__ = ["DEFAULT_MODEL", "Generator", "LocalGenerator", "OpenAIGenerator", "SamplingParams", "embedded_dir",
           "load_model", "make_generator", "resolve_model"]
