"""Any OpenAI-compatible chat-completions server as a cada generator (:class:`OpenAIGenerator`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from cada.errors import CadaError
from cada.models.generate import Messages, SamplingParams, progress_bar


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
        self.last_stats: dict = {}
        self._lock = threading.Lock()
        self._tokens, self._has_usage = 0, True
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
        usage = getattr(resp, "usage", None)
        with self._lock:
            self._tokens += int(getattr(usage, "completion_tokens", 0) or 0)
            self._has_usage = self._has_usage and usage is not None
        return (resp.choices[0].message.content or "").strip()

    def generate(self, prompts: Sequence[Messages], params: SamplingParams = SamplingParams()) -> list[list[str]]:
        import time

        t0 = time.perf_counter()
        self._tokens, self._has_usage = 0, True
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
        # completion tokens as the server counts them (None when it reports no usage)
        self.last_stats = dict(prompts=len(prompts), sequences=len(jobs), concurrency=self.concurrency,
                               new_tokens=self._tokens if self._has_usage else None,
                               seconds=round(time.perf_counter() - t0, 3))
        return out
