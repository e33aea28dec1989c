"""One small generation interface with two backends: local transformers and any OpenAI-compatible server.

Both take a batch of chat conversations and return, for each, ``n`` completion texts::

    gen = LocalGenerator.from_name("smollm2-135m")
    texts = gen.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=32))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
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

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise CadaError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise CadaError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise CadaError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise CadaError(f"n must be >= 1, got {self.n}")


@runtime_checkable
class Generator(Protocol):
    """Batched chat conversations in, ``n`` texts per conversation out."""

    name: str

    def generate(self, prompts: Sequence[Messages], params: SamplingParams = SamplingParams()) -> list[list[str]]:
        ...


def progress_bar(disable: bool = False) -> Progress:
    """The rich progress bar every long cada stage shows (count, elapsed, ETA), on stderr."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), disable=disable,
                    console=Console(stderr=True))


class LocalGenerator:
    """transformers ``generate`` with left padding, length-sorted batches and a progress bar."""

    def __init__(self, model, tokenizer, *, batch_size: int = 16, show_progress: bool = True,
                 name: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.name = name or getattr(model, "name_or_path", "local")

    @classmethod
    def from_name(cls, model: str | None = None, *, device: str | None = None, dtype: str | None = None,
                  trust_remote_code: bool = False, **kwargs) -> "LocalGenerator":
        from cada.models.load import load_model

        m, tok = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(m, tok, name=str(model or "smollm2-135m"), **kwargs)

    def render(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: Sequence[Messages], params: SamplingParams = SamplingParams()) -> list[list[str]]:
        import torch

        texts = [self.render(m) for m in prompts]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first: OOM shows up early
        out: list[list[str]] = [[] for _ in texts]
        sample = params.temperature > 0
        n_seq = params.n if sample else 1
        gen_kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=sample,
                          num_return_sequences=n_seq, pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p)
        else:  # silence "temperature is set but do_sample=False" from the checkpoint's generation config
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        device = self.model.device
        with progress_bar(disable=not self.show_progress) as bar:
            task = bar.add_task("generating", total=len(texts))
            for b, start in enumerate(range(0, len(order), self.batch_size)):
                idx = order[start:start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                     padding_side="left", add_special_tokens=False).to(device)
                torch.manual_seed(params.seed + b)
                with torch.inference_mode():
                    seqs = self.model.generate(**enc, **gen_kwargs)
                new = seqs[:, enc["input_ids"].shape[1]:]
                decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                for j, i in enumerate(idx):
                    got = [t.strip() for t in decoded[j * n_seq:(j + 1) * n_seq]]
                    out[i] = got if sample else got * params.n
                bar.advance(task, len(idx))
        return out


class OpenAIGenerator:
    """Any OpenAI-compatible chat-completions server (vLLM, TGI, ``transformers serve``, hosted APIs).

    The API key comes from ``api_key`` or the environment (``CADA_API_KEY``, then ``OPENAI_API_KEY``) and is never
    written anywhere. Timeouts and bounded retries with exponential backoff come from the ``openai`` client;
    ``concurrency`` bounds the requests in flight.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 3, concurrency: int = 8, show_progress: bool = True):
        import openai

        self.base_url, self.model, self.name = base_url, model, model
        self.concurrency = max(1, concurrency)
        self.show_progress = show_progress
        key = api_key or os.environ.get("CADA_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIGenerator(base_url={self.base_url!r}, model={self.model!r})"

    def _one(self, messages: Messages, params: SamplingParams, seed: int) -> str:
        import openai

        try:
            resp = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=params.temperature, top_p=params.top_p,
                max_tokens=params.max_new_tokens, seed=seed)
        except openai.APIConnectionError as e:  # includes timeouts, after the client's retries
            raise CadaError(f"cannot reach the server at {self.base_url} ({type(e).__name__}: {e})") from None
        except openai.APIStatusError as e:
            raise CadaError(f"server at {self.base_url} answered HTTP {e.status_code}: "
                            f"{str(e.message).splitlines()[0][:300]}") from None
        return (resp.choices[0].message.content or "").strip()

    def generate(self, prompts: Sequence[Messages], params: SamplingParams = SamplingParams()) -> list[list[str]]:
        jobs = [(i, k) for i in range(len(prompts)) for k in range(params.n)]
        out: list[list[str]] = [[""] * params.n for _ in prompts]
        with progress_bar(disable=not self.show_progress) as bar, \
                ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            task = bar.add_task("requesting", total=len(jobs))
            futures = {pool.submit(self._one, prompts[i], params, params.seed + k): (i, k) for i, k in jobs}
            try:
                for fut in as_completed(futures):
                    i, k = futures[fut]
                    out[i][k] = fut.result()
                    bar.advance(task)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return out


def make_generator(model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                   **kwargs) -> Generator:
    """A generator for ``model``: over HTTP when ``base_url`` (or ``$CADA_BASE_URL``) is set, else local."""
    base_url = base_url or os.environ.get("CADA_BASE_URL")
    if base_url:
        http_keys = {"timeout", "max_retries", "concurrency", "show_progress"}
        return OpenAIGenerator(base_url, str(model or "default"), api_key=api_key,
                               **{k: v for k, v in kwargs.items() if k in http_keys})
    local_keys = {"device", "dtype", "trust_remote_code", "batch_size", "show_progress"}
    return LocalGenerator.from_name(model, **{k: v for k, v in kwargs.items() if k in local_keys})
