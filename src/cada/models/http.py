"""Any OpenAI-compatible chat-completions server as a cada generator (:class:`OpenAIGenerator`).

What goes wrong with a server, and what the user sees (one line each, a :class:`~cada.errors.CadaError`):

* no answer within ``timeout`` seconds, a refused connection, HTTP 408/409/429 or 5xx: retried up to
  ``max_retries`` times with exponential backoff (``backoff``, 2x ``backoff``, 4x ... seconds, at most 30; a
  ``Retry-After`` header of up to 60 s is honoured), each retry announced by a logging warning on stderr
  (``cada.models.http``: the server, the attempt, the wait); then an error naming the server and the timeout;
* any other HTTP 4xx: not retried; a context-length complaint says the prompt is too long for the model;
* HTTP 200 with a body that is not UTF-8, not JSON, has no choices or a choice without a message: an error naming
  the server and the first 200 characters of what it answered.

The API key never appears in a message: error texts are scrubbed of it, and URLs lose any user:password part and
query string.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from urllib.parse import urlsplit, urlunsplit

from cada.errors import CadaError
from cada.models.generate import Messages, SamplingParams, cut_at_stop, progress_bar

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF = 0.5
MAX_WAIT = 30.0  # the longest backoff between two attempts
MAX_RETRY_AFTER = 60.0  # a server's Retry-After above this is not waited for (the backoff is used instead)
EXCERPT = 200  # characters of a bad answer quoted in an error

_RETRY_STATUS = {408, 409, 429}
_ERROR_CODE = re.compile(r"^Error code: \d+ - ")  # the openai client's prefix to a server's message
_CONTEXT = re.compile(r"context[ _-]?(length|size|window)|max_model_len|max_position_embeddings|"
                      r"prompt is too long|input is too long|too many (input |prompt )?tokens|"
                      r"tokens \+ .{0,3}max_new_tokens.{0,3} must be", re.IGNORECASE)


class ServerError(CadaError):
    """A request the server did not answer usefully (after the retries, when it was worth retrying)."""


class ServerUnreachable(ServerError):
    """No answer at all: the connection failed or the server gave none within the timeout (after the retries).
    A batch stops sending requests after one of these (:meth:`OpenAIGenerator.generate_each`)."""


def safe_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, query string or fragment (where keys sometimes hide)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", "")) or str(url)
    except ValueError:
        return "<unparseable url>"


def excerpt(text: str | bytes, limit: int = EXCERPT) -> str:
    """The start of a server's answer, safe on one line: invalid UTF-8 replaced, control characters escaped,
    whitespace runs collapsed, cut at ``limit`` characters, quoted."""
    if isinstance(text, bytes):
        text = text[:limit * 4].decode("utf-8", "replace")
    text = " ".join(str(text).split())
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else "?" for ch in text)
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return f"'{cut}'" if cut else "an empty body"


class OpenAIGenerator:
    """Any OpenAI-compatible chat-completions server (vLLM, TGI, ``transformers serve``, hosted APIs).

    The API key comes from ``api_key`` or the environment (``CADA_API_KEY``, then ``OPENAI_API_KEY``) and is never
    written anywhere. ``timeout`` (seconds, per request, default 120) and ``max_retries`` (default 3; 0 asks once)
    bound each request; retries wait ``backoff`` seconds, then twice as long each time (see the module's doc).
    ``None`` for any of them means its default. ``concurrency`` bounds the requests in flight.
    """

    # chat-completions has no common way to continue an assistant message (vLLM's continue_final_message is its
    # own); callers that prefill (PAIR's attacker) ask plainly instead
    can_continue = False

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float | None = None,
                 max_retries: int | None = None, concurrency: int = 8, show_progress: bool = True,
                 backoff: float | None = None):
        import openai

        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        max_retries = DEFAULT_MAX_RETRIES if max_retries is None else max_retries
        backoff = DEFAULT_BACKOFF if backoff is None else backoff
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            raise CadaError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise CadaError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not math.isfinite(backoff) \
                or backoff < 0:
            raise CadaError(f"backoff must be a number of seconds >= 0, got {backoff!r}")
        self.base_url, self.model, self.name = base_url, model, model
        self.url = safe_url(base_url)  # what messages name
        self.timeout, self.max_retries, self.backoff = float(timeout), max_retries, float(backoff)
        self.concurrency = max(1, concurrency)
        self.show_progress = show_progress
        self.last_stats: dict = {}
        self._lock = threading.Lock()
        self._tokens, self._has_usage, self._retries = 0, True, 0
        key = api_key or os.environ.get("CADA_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        # The client's own retries are silent (its logger speaks at INFO) and its last error does not say how long
        # it waited, so it asks once (max_retries=0) and the small bounded loop in `_one` retries, visibly.
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=self.timeout, max_retries=0)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIGenerator(base_url={self.url!r}, model={self.model!r})"

    # -- one request -----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        key = getattr(self._client, "api_key", None)
        if key and key != "EMPTY" and len(key) >= 4:
            text = text.replace(key, "***")
        return text

    def _fail(self, cls: type[ServerError], message: str) -> ServerError:
        return cls(self._scrub(message))

    def _wait(self, attempt: int, headers) -> float:
        wait = min(MAX_WAIT, self.backoff * 2 ** (attempt - 1))
        try:
            after = float((headers or {}).get("retry-after", ""))
            if 0 <= after <= MAX_RETRY_AFTER:
                wait = after
        except (TypeError, ValueError):
            pass
        return wait

    def _status_problem(self, e) -> tuple[str, bool, bool]:
        """(what the server said, worth retrying, a context-length complaint) for an HTTP error status."""
        body = e.body if isinstance(getattr(e, "body", None), (dict, list, str)) else None
        message = _ERROR_CODE.sub("", str(getattr(e, "message", "") or ""))
        said = message if body is None else f"{message} {body if isinstance(body, str) else json.dumps(body)}"
        context = bool(_CONTEXT.search(said))
        retry = not context and (e.status_code in _RETRY_STATUS or e.status_code >= 500)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            message = body["message"]  # the openai client passes the body's "error" object as body
        return f"HTTP {e.status_code}: {excerpt(message or said)}", retry, context

    def _one(self, messages: Messages, params: SamplingParams, seed: int, stop: threading.Event | None = None) -> str:
        import openai

        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            headers = None
            try:
                raw = self._client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, temperature=params.temperature, top_p=params.top_p,
                    max_tokens=params.max_new_tokens, seed=seed,
                    **({"stop": list(params.stop)} if params.stop else {}))
                text = self._parse(raw.http_response.content)
                # cut here too: a server that ignores `stop` (not every one honours it) gives the same text
                return cut_at_stop(text, params.stop).strip() if params.stop else text
            except openai.APITimeoutError:
                problem, kind = f"no answer within {self.timeout:g} s", "timeout"
            except openai.APIConnectionError as e:  # refused, reset, DNS: the cause says which
                cause = e.__cause__ or e
                problem, kind = f"cannot connect ({type(cause).__name__}: {excerpt(str(cause), 120)})", "connect"
            except openai.APIStatusError as e:
                problem, retry, context = self._status_problem(e)
                headers = getattr(e.response, "headers", None)
                if context:
                    raise self._fail(ServerError, f"the server at {self.url} refused the request because the "
                                     f"prompt plus max_new_tokens={params.max_new_tokens} is longer than model "
                                     f"{self.model!r} takes ({problem}); shorten the prompt or lower "
                                     "--max-new-tokens") from None
                if not retry:
                    hint = {401: "; check the API key (CADA_API_KEY)", 403: "; check the API key (CADA_API_KEY)",
                            404: f"; check the URL and the model name {self.model!r}"}.get(e.status_code, "")
                    raise self._fail(ServerError, f"the server at {self.url} refused the request: "
                                     f"{problem}{hint}") from None
                kind = "status"
            if attempt == attempts:
                break
            wait = self._wait(attempt, headers)
            with self._lock:
                self._retries += 1
            log.warning("%s", self._scrub(f"server at {self.url}: {problem} (attempt {attempt} of {attempts}); "
                                          f"retrying in {round(wait, 2):g} s"))
            if stop is not None and stop.wait(wait):
                break  # the batch is over (another request failed, or the user interrupted)
            if stop is None:
                time.sleep(wait)
        tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
        if kind == "timeout":
            raise self._fail(ServerUnreachable, f"the server at {self.url} gave no answer within "
                             f"{self.timeout:g} s ({tries}); check that it is up, or raise --timeout if it is "
                             "only slow") from None
        if kind == "connect":
            raise self._fail(ServerUnreachable, f"cannot reach the server at {self.url} ({tries}; last: "
                             f"{problem}); is it running, and is the URL right?") from None
        raise self._fail(ServerError, f"the server at {self.url} failed ({tries}; last: {problem})") from None

    def _parse(self, body: bytes) -> str:
        """The first choice's text from a 200 answer's raw body (a one-line error when it is not one)."""
        what = f"the server at {self.url} answered HTTP 200"
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._fail(ServerError, f"{what} with a body that is not valid UTF-8 (byte {e.start}): "
                             f"{excerpt(body)}") from None
        try:
            data = json.loads(text)
        except ValueError:
            hint = "" if self.url.rstrip("/").endswith("/v1") else \
                f"; is {self.url} an OpenAI-compatible API (the URL usually ends in /v1)?"
            raise self._fail(ServerError, f"{what} with a body that is not JSON: {excerpt(text)}{hint}") from None
        if not isinstance(data, dict):
            raise self._fail(ServerError, f"{what} with JSON that is not a completion: {excerpt(text)}")
        if data.get("error") and not data.get("choices"):
            err = data["error"]
            said = str(err.get("message", err) if isinstance(err, dict) else err)
            if _CONTEXT.search(said):
                raise self._fail(ServerError, f"{what} with an error: the prompt is longer than model "
                                 f"{self.model!r} takes ({excerpt(said)}); shorten the prompt or lower "
                                 "--max-new-tokens")
            raise self._fail(ServerError, f"{what} with an error: {excerpt(said)}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self._fail(ServerError, f"{what} with no choices (no completion): {excerpt(text)}")
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        if not isinstance(message, dict) or "content" not in message:
            raise self._fail(ServerError, f"{what} with a choice that has no message content: {excerpt(text)}")
        content = message["content"]
        if content is not None and not isinstance(content, str):
            raise self._fail(ServerError, f"{what} with a message content that is not text: {excerpt(text)}")
        usage = data.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        with self._lock:
            self._tokens += int(tokens) if isinstance(tokens, (int, float)) else 0
            self._has_usage = self._has_usage and isinstance(usage, dict)
        return (content or "").strip()

    # -- batches ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Fail fast, with one line, when the server cannot be reached at all (one ``GET /models`` within the
        timeout, not retried). A server that answers anything, even an error status, counts as up."""
        import openai

        try:
            self._client.models.with_raw_response.list()
        except openai.APITimeoutError:
            raise self._fail(ServerUnreachable, f"the server at {self.url} gave no answer within "
                             f"{self.timeout:g} s; check that it is up, or raise --timeout") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise self._fail(ServerUnreachable, f"cannot reach the server at {self.url} ({type(cause).__name__}: "
                             f"{excerpt(str(cause), 120)}); is it running, and is the URL right?") from None
        except openai.APIStatusError:
            pass

    def _run(self, prompts: Sequence[Messages], params: SamplingParams, keep_going: bool) -> list[list]:
        t0 = time.perf_counter()
        self._tokens, self._has_usage, self._retries = 0, True, 0
        jobs = [(i, k) for i in range(len(prompts)) for k in range(params.n)]
        out: list[list] = [[""] * params.n for _ in prompts]
        stop = threading.Event()
        down: list[ServerUnreachable] = []  # the first request the server did not answer at all

        def one(i: int, k: int):
            if down:  # the server is gone: do not queue hundreds more requests that will each time out
                raise self._fail(ServerUnreachable, f"{down[0]} [not sent: an earlier request found the server "
                                 "unreachable]")
            try:
                return self._one(prompts[i], params, params.seed + k, stop)
            except ServerUnreachable as e:
                if keep_going and not down:
                    down.append(e)
                raise

        with progress_bar(disable=not self.show_progress) as bar, \
                ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            task = bar.add_task("requesting", total=len(jobs))
            futures = {pool.submit(one, i, k): (i, k) for i, k in jobs}
            try:
                for fut in as_completed(futures):
                    i, k = futures[fut]
                    if keep_going:
                        exc = fut.exception()
                        if exc is not None and not isinstance(exc, CadaError):
                            raise exc
                        out[i][k] = exc if exc is not None else fut.result()
                    else:
                        out[i][k] = fut.result()
                    bar.advance(task)
            except BaseException:
                stop.set()  # wakes requests waiting to retry
                for f in futures:
                    f.cancel()
                raise
        # completion tokens as the server counts them (None when it reports no usage)
        failed = sum(isinstance(t, Exception) for row in out for t in row)
        self.last_stats = dict(prompts=len(prompts), sequences=len(jobs), concurrency=self.concurrency,
                               new_tokens=self._tokens if self._has_usage else None, retries=self._retries,
                               failed=failed, seconds=round(time.perf_counter() - t0, 3))
        return out

    def generate(self, prompts: Sequence[Messages], params: SamplingParams = SamplingParams()) -> list[list[str]]:
        """``n`` texts per conversation; the first request that fails (after its retries) raises its one-line
        :class:`ServerError` and the rest are cancelled."""
        return self._run(prompts, params, keep_going=False)

    def generate_each(self, prompts: Sequence[Messages],
                      params: SamplingParams = SamplingParams()) -> list[list[str | ServerError]]:
        """:meth:`generate`, but a request that fails leaves its :class:`ServerError` in its place and the others
        go on; once one finds the server unreachable, those not yet sent fail with its error, marked
        ``[not sent: ...]``, without a request. ``last_stats``
        counts the ``failed`` ones."""
        return self._run(prompts, params, keep_going=True)
