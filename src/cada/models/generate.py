"""One small generation interface, three backends: local transformers (:mod:`cada.models.local`), any
OpenAI-compatible server (:mod:`cada.models.http`), and vLLM's offline engine (:mod:`cada.models.vllm_backend`,
optional).

Each takes a batch of chat conversations and returns, for each, ``n`` completion texts::

    gen = LocalGenerator.from_name("smollm2-135m")
    texts = gen.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=32))

:func:`make_generator` picks one (``backend="auto"``: HTTP when a base URL is set, else local).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cada.errors import CadaError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()   # the text ends before the first of these (OpenAI's ``stop``: not included)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise CadaError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise CadaError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise CadaError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise CadaError(f"n must be >= 1, got {self.n}")
        if isinstance(self.stop, str) or any(not isinstance(x, str) or not x for x in self.stop):
            raise CadaError(f"stop must be a sequence of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any ``stop`` string (which is not kept), as OpenAI's ``stop``.

    >>> cut_at_stop('{"prompt": "x"} more', ["}"])
    '{"prompt": "x"'
    >>> cut_at_stop("no stop here", ["}"]), cut_at_stop("a.b", [])
    ('no stop here', 'a.b')
    """
    cut = min((i for i in (text.find(x) for x in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def continues(prompts: Sequence[Messages]) -> bool:
    """Whether the chats end with the assistant's own opening words to continue (a prefill): all of them or none;
    a backend with ``can_continue`` renders them without a new assistant turn and returns the continuation."""
    last = [bool(m) and m[-1].get("role") == "assistant" for m in prompts]
    if any(last) and not all(last):
        raise CadaError("a batch of chats mixes prefilled assistant turns with plain ones; generate them apart")
    return bool(last) and all(last)


@runtime_checkable
class Generator(Protocol):
    """Batched chat conversations in, ``n`` texts per conversation out. A generator whose ``can_continue`` is true
    also takes chats that end with an assistant message and continues that message (a prefill; see
    :func:`continues`); the others are given plain chats only."""

    name: str

    def generate(self, prompts: Sequence[Messages], params: SamplingParams = SamplingParams()) -> list[list[str]]:
        ...


def progress_bar(disable: bool = False) -> Progress:
    """The rich progress bar every long cada stage shows (count, elapsed, ETA), on stderr."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), disable=disable,
                    console=Console(stderr=True))


# --- helpers the backends share ------------------------------------------------------------------

# end-of-turn markers of common chat templates; used only when the tokenizer has them as special tokens
_KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>",
                      "<|end_of_text|>", "</s>")


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids |= {i for i, t in decoder.items() if getattr(t, "special", False)}
    return ids


def end_of_turn_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an assistant turn: the model's and tokenizer's eos, plus the special token the chat
    template closes an assistant message with (``<|im_end|>`` for SmolLM2, ``<|eot_id|>`` for Llama 3, ...).

    Generation stops at whichever comes first, so a model whose ``eos`` is ``<|endoftext|>`` still stops at the end
    of its turn instead of running on into a new one.
    """
    ids: list[int] = []

    def add(value) -> None:
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    add(getattr(tokenizer, "eos_token_id", None))
    special = _special_ids(tokenizer)
    marker = "cada-end-of-turn-probe"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
        tail = text[text.rindex(marker) + len(marker):]
        first_special = [t for t in tokenizer(tail, add_special_tokens=False)["input_ids"] if t in special][:1]
        add(first_special)
    except Exception:  # no chat template, or one that rejects this conversation: keep eos only
        pass
    unk = getattr(tokenizer, "unk_token_id", None)
    for name in _KNOWN_END_OF_TURN:
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != unk and tid in special:
            add(tid)
    return ids


# --- picking a backend ---------------------------------------------------------------------------

BACKENDS = ("auto", "local", "http", "vllm")
_HTTP_KEYS = {"timeout", "max_retries", "backoff", "concurrency", "show_progress"}
_LOCAL_KEYS = {"device", "dtype", "trust_remote_code", "batch_size", "show_progress", "prefix_cache",
               "min_prefix_tokens", "adaptive_batch", "max_batch_size"}
_VLLM_KEYS = {"tensor_parallel_size", "dtype", "seed", "gpu_memory_utilization", "max_model_len",
              "trust_remote_code", "show_progress", "engine_kwargs"}


def make_generator(model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                   backend: str = "auto", **kwargs) -> Generator:
    """A generator for ``model``.

    ``backend``: ``auto`` (HTTP when ``base_url`` or ``$CADA_BASE_URL`` is set, else local transformers),
    ``local``, ``http`` (any OpenAI-compatible server, e.g. ``vllm serve``), or ``vllm`` (vLLM's offline engine in
    this process; ``pip install -e '.[vllm]'`` in the cada checkout, Linux + CUDA; ``tensor_parallel_size=N``
    spreads it over N GPUs).
    Keyword arguments a backend does not take are ignored, so callers can pass one set of options. The HTTP
    backend takes ``timeout`` (seconds per request, default 120), ``max_retries`` (default 3), ``backoff`` (the
    first wait between attempts, default 0.5 s, doubling), ``concurrency`` and ``show_progress``; ``None`` for any
    of the first three means its default (see :mod:`cada.models.http`).
    """
    if backend not in BACKENDS:
        raise CadaError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "local":
        base_url = None
    else:
        base_url = base_url or os.environ.get("CADA_BASE_URL")
    if backend == "http" and not base_url:
        raise CadaError("backend http needs a server: pass --base-url URL or set CADA_BASE_URL")
    if backend == "vllm":
        from cada.models.vllm_backend import VLLMGenerator

        return VLLMGenerator(model, **{k: v for k, v in kwargs.items() if k in _VLLM_KEYS})
    if base_url:
        from cada.models.http import OpenAIGenerator

        return OpenAIGenerator(base_url, str(model or "default"), api_key=api_key,
                               **{k: v for k, v in kwargs.items() if k in _HTTP_KEYS})
    from cada.models.local import LocalGenerator

    return LocalGenerator.from_name(model, **{k: v for k, v in kwargs.items() if k in _LOCAL_KEYS})
