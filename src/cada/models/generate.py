"""One small generation interface, three backends: local transformers, any OpenAI-compatible server, and vLLM's
offline engine (:mod:`cada.models.vllm_backend`, optional).

Each takes a batch of chat conversations and returns, for each, ``n`` completion texts::

    gen = LocalGenerator.from_name("smollm2-135m")
    texts = gen.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=32))

:func:`make_generator` picks one (``backend="auto"``: HTTP when a base URL is set, else local).
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
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


# --- fast local generation -----------------------------------------------------------------------

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


def shared_prefix_len(ids: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix of ``ids``, leaving at least one token of each row outside it.

    >>> shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 9, 9], [1, 2, 5]])
    2
    >>> shared_prefix_len([[7, 8], [7, 8]])
    1
    """
    if not ids:
        return 0
    limit = min(len(x) for x in ids) - 1
    first = ids[0]
    n = 0
    while n < limit and all(x[n] == first[n] for x in ids):
        n += 1
    return max(n, 0)


def ragged_groups(lengths: Sequence[int], overhead: int = 128) -> list[list[int]]:
    """Rows grouped for encoding their prompts at each group's own width, not the batch's longest.

    ``lengths`` are the rows' own prompt tokens; the cost of a group is rows x its longest row + ``overhead`` (a
    forward pass's fixed cost, in token-rows). Rows sorted by length are cut into the contiguous runs of least total
    cost (dynamic programming): a batch of ~250-token prompts with one 1,300-token jailbreak-wrapped prompt encodes
    the long one alone instead of padding every row to 1,300 tokens. Returns row indices per group, longest first.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best, cut = [0] + [None] * n, [0] * (n + 1)  # best[j]: least cost of the first j rows (in order)
    for j in range(1, n + 1):
        for i in range(j):  # group order[i:j], whose widest row is order[i]
            c = best[i] + (j - i) * lengths[order[i]] + overhead
            if best[j] is None or c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def batch_rows_for_memory(free_bytes: int, config, dtype_bytes: int, tokens_per_row: int, n_seq: int = 1,
                          cap: int = 256, fraction: float = 0.7) -> int:
    """How many prompts fit in ``free_bytes`` of accelerator memory when each becomes ``n_seq`` sequences of up to
    ``tokens_per_row`` tokens: KV cache plus prefill activations per token, plus the float32 logits of a step.

    A deliberately simple estimate; an out-of-memory error still halves the batch and retries.

    >>> from types import SimpleNamespace as C
    >>> cfg = C(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576,
    ...         intermediate_size=1536, vocab_size=49152)
    >>> batch_rows_for_memory(80 * 2**30, cfg, 2, 4096, cap=1024)
    396
    >>> batch_rows_for_memory(80 * 2**30, cfg, 2, 4096, n_seq=4, cap=1024)
    99
    >>> batch_rows_for_memory(2**20, cfg, 2, 4096)
    1
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    inter = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
    kv_per_token = 2 * layers * kv_heads * head_dim * dtype_bytes
    act_per_token = (4 * text.hidden_size + 3 * inter) * dtype_bytes
    per_seq = tokens_per_row * (kv_per_token + act_per_token) + 3 * 4 * text.vocab_size
    rows = int(free_bytes * fraction) // max(1, per_seq * n_seq)
    return max(1, min(cap, rows))


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


# the shared prefix's keys/values per layer (batch 1) while a LocalGenerator call runs with one; read by
# _shared_prefix_attention, which the model's attention points at for the duration of that call only
_PREFIX_KV: contextvars.ContextVar = contextvars.ContextVar("cada_prefix_kv", default=None)
_PREFIX_ATTN = {"sdpa": "cada_prefix_sdpa", "eager": "cada_prefix_eager"}


@functools.cache
def _shared_prefix_layer_class():  # a function so that importing cada does not import transformers
    from transformers.cache_utils import DynamicLayer

    class SharedPrefixLayer(DynamicLayer):
        """A :class:`~transformers.cache_utils.DynamicLayer` whose first ``prefix_len`` positions are the shared
        prefix, held once for all rows by :func:`_shared_prefix_attention`; only each row's own tokens are stored
        here, in place, in storage allocated once for the whole generation.

        Every row used to carry a copy of the prefix: with the ~3.2k-token ``codes`` prompt that is ~150 MB per row
        (float32, SmolLM2-135M), copied for every batch and read again at every new token, most of the time of a
        ``codes`` run. ``get_seq_length`` counts the prefix, so positions and masks are those of the plain path;
        ``keys``/``values`` are the rows' own part.
        """

        def __init__(self, prefix_len: int, like, rows: int, capacity: int):
            super().__init__()
            self.prefix_len = prefix_len
            self._k = like.new_empty((rows, like.shape[1], capacity, like.shape[3]))
            self._v = like.new_empty((rows, like.shape[1], capacity, like.shape[3]))
            self.device, self.is_initialized = like.device, True
            self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]

        def get_seq_length(self) -> int:
            return self.prefix_len + self.keys.shape[-2]

        def batch_repeat_interleave(self, repeats: int) -> None:  # n samples of each prompt
            used = self.keys.shape[-2]
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self.keys, self.values = self._k[:, :, :used], self._v[:, :, :used]

        def update(self, key_states, value_states, *args, **kwargs):
            start = self.keys.shape[-2]
            end = start + key_states.shape[-2]  # the capacity covers the rows' prompts + max_new_tokens
            self._k[:, :, start:end] = key_states
            self._v[:, :, start:end] = value_states
            self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
            return self.keys, self.values

    return SharedPrefixLayer


def _fused_prompt_attention(device) -> bool:
    """Prompt chunks through the model's own kernel (prefix broadcast in) rather than the split matmuls: on GPUs,
    whose fused kernels need no scores in memory. On the CPU the split matmuls were faster."""
    return device.type != "cpu"


def _shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, *, plain=None, **kwargs):
    """Attention over ``[shared prefix][row's own keys]`` where the prefix is stored once (batch 1).

    The queries of all rows are scored against the one prefix copy in a single matmul per key/value head, their own
    keys per row, and both parts merge in one softmax: the prefix is read once per step (and per prompt chunk)
    instead of once per row, and never copied per row or per query head. ``attention_mask`` covers prefix and rows
    (``get_seq_length`` counts the prefix); pads sit between them. Rows go in chunks that keep the float32 scores
    near 64 MB. On a GPU the prompts' own tokens (several queries per row) go through the model's fused kernel
    with the prefix broadcast in, which needs no scores in memory.
    """
    import torch

    prefix = _PREFIX_KV.get()
    if prefix is None or getattr(module, "layer_idx", None) is None:
        return plain(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    kp, vp = prefix[module.layer_idx]  # (1, kv_heads, P, head_dim)
    b, heads, q_len, dim = query.shape
    p, s = kp.shape[-2], key.shape[-2]
    groups = kp.shape[1]
    rep = heads // groups  # query head h reads key/value head h // rep
    if attention_mask is None:  # causal, aligned to the end: query i sees the prefix and the row's keys up to i
        attention_mask = torch.ones(q_len, p + s, dtype=torch.bool, device=query.device).tril(p + s - q_len)
        attention_mask = attention_mask[None, None]
    if q_len > 1 and _fused_prompt_attention(query.device):  # prompt chunks on a GPU: its kernel, prefix broadcast
        return plain(module, query, torch.cat([kp.expand(b, -1, -1, -1), key], dim=2),
                     torch.cat([vp.expand(b, -1, -1, -1), value], dim=2), attention_mask, dropout=dropout,
                     scaling=scaling, **kwargs)
    mask = attention_mask.reshape(-1, 1, 1, q_len, attention_mask.shape[-1])[..., -(p + s):]
    scale = scaling if scaling is not None else dim ** -0.5
    chunk = max(1, (64 << 20) // (4 * heads * q_len * (p + s)))
    out = []
    for i in range(0, b, chunk):
        qg = query[i:i + chunk].reshape(-1, groups, rep * q_len, dim)
        n = qg.shape[0]
        on_prefix = torch.bmm(qg.transpose(0, 1).reshape(groups, n * rep * q_len, dim), kp[0].transpose(1, 2))
        scores = torch.cat([on_prefix.reshape(groups, n, rep * q_len, p).transpose(0, 1),
                            qg @ key[i:i + chunk].transpose(-1, -2)], dim=-1).reshape(n, groups, rep, q_len, p + s)
        scores = scores * scale
        m = mask[i:i + chunk] if mask.shape[0] > 1 else mask
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype).reshape(n, groups, rep * q_len,
                                                                                            p + s)
        from_prefix = torch.bmm(probs[..., :p].transpose(0, 1).reshape(groups, n * rep * q_len, p), vp[0])
        out.append(from_prefix.reshape(groups, n, rep * q_len, dim).transpose(0, 1)
                   + probs[..., p:] @ value[i:i + chunk])
    attn = torch.cat(out) if len(out) > 1 else out[0]
    return attn.reshape(b, heads, q_len, dim).transpose(1, 2).contiguous(), None


@functools.cache
def _register_shared_prefix_attention() -> None:
    """Register the shared-prefix attention beside ``sdpa`` and ``eager`` (each with its own mask format)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
    from transformers.models.llama.modeling_llama import eager_attention_forward

    for kind, plain, mask in (("sdpa", sdpa_attention_forward, sdpa_mask), ("eager", eager_attention_forward,
                                                                          eager_mask)):
        AttentionInterface.register(_PREFIX_ATTN[kind], functools.partial(_shared_prefix_attention, plain=plain))
        AttentionMaskInterface.register(_PREFIX_ATTN[kind], mask)


class LocalGenerator:
    """transformers ``generate``, made fast for cada's workload.

    * left padding and length-sorted batches (longest first, so an out-of-memory error shows up early);
    * stops at the chat template's end of turn as well as at eos (:func:`end_of_turn_ids`);
    * **shared-prefix KV cache**: when every prompt of a call starts with the same long token prefix (the system
      prompt with the spec: ~3.2k tokens in ``codes`` mode, ~4.4k in ``cases`` mode with all precedents) the prefix
      is encoded once and its keys/values are reused by every batch, laid out as ``[prefix][left pad][suffix]``
      with the pads masked out, so positions and attention are exactly those of the plain path. The latest prefix
      is kept for later calls that start with it (resumable stages call ``generate`` once per chunk). The prefix
      is held once for all rows: each decoding step reads it once, not once per row
      (:func:`_shared_prefix_attention`), and each batch's own cache is allocated once and written in place
      (:func:`_shared_prefix_layer_class`). Used when the prefix
      has at least ``min_prefix_tokens`` tokens and the model's cache is a plain full-attention ``DynamicCache``;
      otherwise the plain path runs;
    * prompts encoded by cada, not by ``generate``: once per prompt for its n samples (the cache is copied n
      times), and in groups of similar length when a batch mixes short prompts with long ones (a jailbreak-wrapped
      request runs to 1,300 tokens where most prompts have 250), each group at its own width
      (:func:`ragged_groups`);
    * adaptive batch size: on CUDA the batch is sized from free memory (capped at ``max_batch_size``); on the CPU
      ``batch_size`` is used as given. On an out-of-memory error the batch is halved and retried, and the learned
      limit is kept for later calls.

    ``last_stats`` describes the latest call (new tokens up to and including the stop token, batches, prefix, the
    forward passes that encoded prompts).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 16, show_progress: bool = True,
                 name: str | None = None, prefix_cache: bool = True, min_prefix_tokens: int = 128,
                 adaptive_batch: bool | None = None, max_batch_size: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.name = name or getattr(model, "name_or_path", "local")
        self.prefix_cache = prefix_cache
        self.min_prefix_tokens = max(1, min_prefix_tokens)
        self.adaptive_batch = adaptive_batch
        self.max_batch_size = max_batch_size
        self.stop_ids = end_of_turn_ids(tokenizer, model)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.stop_ids[0] if self.stop_ids else 0)
        self._token_budget: int | None = None  # rows x tokens x n that fitted after an out-of-memory error
        self._prefix_memo: tuple[list[int], object] | None = None  # (prefix tokens, their keys/values or None)
        self._encode_once = True  # n samples: encode each prompt once (False: generate's n copies; for benchmarks)
        self._ragged = True  # encode prompts of very different lengths in groups (False: one pass; for benchmarks)
        self._prompt_passes = 0  # forward passes that encoded prompts in the latest call (0: generate did)
        self.last_stats: dict = {}

    @classmethod
    def from_name(cls, model: str | None = None, *, device: str | None = None, dtype: str | None = None,
                  trust_remote_code: bool = False, **kwargs) -> "LocalGenerator":
        from cada.models.load import load_model

        m, tok = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(m, tok, name=str(model or "smollm2-135m"), **kwargs)

    def render(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # -- pieces ----------------------------------------------------------------------------------

    @property
    def _cache_kwarg(self) -> str:
        import inspect

        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _fill_kwargs(self, cache) -> dict:
        """Keyword arguments of a forward pass that only fills ``cache`` (its logits are never used)."""
        import inspect

        kwargs = {self._cache_kwarg: cache, "use_cache": True}
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            kwargs["logits_to_keep"] = 1
        return kwargs

    def _rows_per_batch(self, tokens_per_row: int, n_seq: int) -> int:
        import torch

        rows = self.batch_size
        device = self.model.device
        adaptive = self.adaptive_batch if self.adaptive_batch is not None else device.type == "cuda"
        if adaptive and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            # memory torch's caching allocator holds but no tensor uses is free to this process too (else every
            # later call would see less and pick smaller batches)
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            rows = batch_rows_for_memory(free, self.model.config, self.model.dtype.itemsize, tokens_per_row,
                                         n_seq, cap=self.max_batch_size)
        if self._token_budget is not None:
            rows = min(rows, max(1, self._token_budget // max(1, tokens_per_row * n_seq)))
        return max(1, rows)

    def _encode_prefix(self, prefix: list[int]):
        """Keys/values of ``prefix`` per layer (batch 1), or None when the model's cache is not a plain one."""
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if self.model.config.is_encoder_decoder:
            return None
        if getattr(self.model.config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
            return None  # the [prefix][pad][suffix] layout is verified with these two kernels only
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([prefix], device=self.model.device)
        with torch.inference_mode():  # fills `cache` in place
            self.model(input_ids=ids, attention_mask=torch.ones_like(ids), **self._fill_kwargs(cache))
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers) \
                or cache.get_seq_length() != len(prefix):
            return None  # sliding-window, linear-attention or otherwise special caches: plain path
        return [(layer.keys, layer.values) for layer in layers]

    def _shared_prefix(self, ids: list[list[int]]) -> tuple[list[int], object]:
        """The prefix shared by all of ``ids`` and its keys/values (``([], None)`` when there is none to use).

        A prefix encoded by an earlier call is reused when every prompt of this call starts with it.
        """
        if not self.prefix_cache or not ids:
            return [], None
        p = shared_prefix_len(ids)
        if p < self.min_prefix_tokens:
            return [], None
        memo = self._prefix_memo
        if memo is not None and len(memo[0]) <= p and ids[0][:len(memo[0])] == memo[0]:
            return memo
        prefix = list(ids[0][:p])
        self._prefix_memo = (prefix, self._encode_prefix(prefix))
        return self._prefix_memo

    def _prefix_cache_for(self, prefix_kv, rows: int, capacity: int):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if len(cache.layers) != len(prefix_kv):
            raise CadaError("internal: prefix cache layers do not match the model")
        layer = _shared_prefix_layer_class()
        cache.layers = [layer(k.shape[-2], k, rows, capacity - k.shape[-2]) for k, _ in prefix_kv]
        return cache

    def _generate_batch(self, rows: list[list[int]], gen_kwargs: dict, seed: int, prefix: list[int],
                        prefix_kv) -> "torch.Tensor":
        """New token ids, ``len(rows) * num_return_sequences`` rows, for one batch of tokenized prompts."""
        import torch

        device = self.model.device
        p = len(prefix) if prefix_kv is not None else 0
        tails = [r[p:] for r in rows]
        width = max(len(t) for t in tails)
        ids = torch.full((len(rows), p + width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), p + width), dtype=torch.long)
        if p:
            ids[:, :p] = torch.tensor(prefix, dtype=torch.long)
            mask[:, :p] = 1
        for j, t in enumerate(tails):  # left padding (between the prefix and the suffix when there is one)
            ids[j, p + width - len(t):] = torch.tensor(t, dtype=torch.long)
            mask[j, p + width - len(t):] = 1
        ids, mask = ids.to(device), mask.to(device)
        n = gen_kwargs["num_return_sequences"]
        config = self.model.config
        # prompts encoded here, not by generate: for n > 1 samples each prompt once, its cache copied n times
        # (generate would encode n copies: with ~500-token `cases` prompts most of a sampling run's time on a CPU),
        # and prompts of very different lengths in groups of similar length (:meth:`_encode_prompts`)
        groups = ragged_groups(mask[:, p:-1].sum(-1).tolist()) if self._ragged else [list(range(len(rows)))]
        once = self._encode_once and not config.is_encoder_decoder and (n > 1 or len(groups) > 1)
        cache = None
        if p:
            cache = self._prefix_cache_for(prefix_kv, len(rows) * (1 if once else n),
                                           p + width + gen_kwargs["max_new_tokens"])
        elif once:
            from transformers import DynamicCache

            cache = DynamicCache(config=config)
        torch.manual_seed(seed)
        before = config._attn_implementation
        token = _PREFIX_KV.set(prefix_kv if p else None)
        try:
            if p:  # the attention that reads the prefix once for all rows, for this call only
                _register_shared_prefix_attention()
                config._attn_implementation = _PREFIX_ATTN[before]
            with torch.inference_mode():
                if once:
                    self._prompt_passes += self._encode_prompts(ids, mask, cache, start=p, groups=groups,
                                                                prefix_kv=prefix_kv if p else None)
                    cache.batch_repeat_interleave(n)
                    ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
                    gen_kwargs = {**gen_kwargs, "num_return_sequences": 1}
                extra = {self._cache_kwarg: cache} if cache is not None else {}
                seqs = self.model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs, **extra)
        finally:
            config._attn_implementation = before
            _PREFIX_KV.reset(token)
        return seqs[:, ids.shape[1]:]

    def _encode_prompts(self, ids, mask, cache, start: int, groups: list[list[int]] | None = None,
                        prefix_kv=None) -> int:
        """Fill ``cache`` with every prompt token but the last (``generate`` starts from the last one), from
        position ``start`` on (the shared prefix before it is in the cache already). Returns the forward passes.

        Rows of very different lengths are encoded in ``groups`` at each group's own width (:func:`ragged_groups`):
        left padding puts every row's tokens at the end, so a group's columns are the last ones of the batch, and
        the columns it skips are pads for all of its rows (masked, stored as zeros). Positions and masks are those
        of the one-pass encoding, so the cache holds the same keys and values.
        """
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        end = ids.shape[1] - 1
        if end <= start:
            return 0
        # positions as generate computes them: left pads do not count
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        width = end - start
        # plain full-attention layers only: a sliding-window or other special layer keeps its own layout
        plain = all(type(layer) in (DynamicLayer, _shared_prefix_layer_class()) for layer in cache.layers)
        if not groups or len(groups) == 1 or not plain:
            with torch.inference_mode():
                self.model(input_ids=ids[:, start:end], attention_mask=mask[:, :end],
                           position_ids=positions[:, start:end], **self._fill_kwargs(cache))
            return 1
        own = mask[:, start:end].sum(-1).tolist()
        passes = 0
        with torch.inference_mode():
            for rows in groups:
                w = max(own[i] for i in rows)
                if w == 0:
                    continue  # these rows' tokens are all in the prefix: their part stays zeros (masked)
                lo, sel = end - w, torch.tensor(rows, device=ids.device)
                if prefix_kv is not None:
                    part = self._prefix_cache_for(prefix_kv, len(rows), start + w)
                else:
                    part = DynamicCache(config=self.model.config)
                self.model(input_ids=ids[sel, lo:end],
                           attention_mask=torch.cat([mask[sel, :start], mask[sel, lo:end]], dim=-1),
                           position_ids=positions[sel, lo:end], **self._fill_kwargs(part))
                passes += 1
                for main, got in zip(cache.layers, part.layers):
                    if not main.is_initialized or main.keys.shape[-2] == 0:  # zeros for every row up to width
                        main.update(*(t.new_zeros((ids.shape[0], t.shape[1], width, t.shape[-1]))
                                      for t in (got.keys, got.values)))
                    main.keys[sel, :, width - w:] = got.keys
                    main.values[sel, :, width - w:] = got.values
        return passes

    def _trim(self, row) -> tuple[list[int], int]:
        """Tokens before the first stop token, and how many tokens were generated including that stop."""
        toks = row.tolist()
        for k, t in enumerate(toks):
            if t in self.stop_ids:
                return toks[:k], k + 1
        return toks, len(toks)

    # -- the call -------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Messages], params: SamplingParams = SamplingParams()) -> list[list[str]]:
        import logging
        import time

        import torch

        t0 = time.perf_counter()
        texts = [self.render(m) for m in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # longest first: OOM shows up early
        out: list[list[str]] = [[] for _ in texts]
        sample = params.temperature > 0
        n_seq = params.n if sample else 1
        gen_kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=sample, num_return_sequences=n_seq,
                          pad_token_id=self.pad_id, eos_token_id=list(self.stop_ids) or None)
        if sample:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p)
        else:  # silence "temperature is set but do_sample=False" from the checkpoint's generation config
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)

        memo = self._prefix_memo
        prefix, prefix_kv = self._shared_prefix(ids)
        stats = dict(prompts=len(texts), sequences=len(texts) * n_seq, new_tokens=0, batches=0, oom_retries=0,
                     prefix_tokens=len(prefix) if prefix_kv is not None else 0,
                     prefix_reused=prefix_kv is not None and memo is not None and prefix_kv is memo[1])
        longest = len(ids[order[0]]) if order else 0
        self._prompt_passes = 0
        rows = self._rows_per_batch(longest + params.max_new_tokens, n_seq)
        stats["batch_rows"] = rows
        with progress_bar(disable=not self.show_progress) as bar:
            task = bar.add_task("generating", total=len(texts))
            pos = b = 0
            while pos < len(order):
                idx = order[pos:pos + rows]
                try:
                    new = self._generate_batch([ids[i] for i in idx], gen_kwargs, params.seed + b, prefix,
                                               prefix_kv)
                except Exception as e:
                    if not _is_oom(e):
                        raise
                    if self.model.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if len(idx) == 1:
                        raise CadaError(f"out of memory generating a single prompt of {len(ids[idx[0]])} tokens "
                                        f"(+{params.max_new_tokens} new): lower --max-new-tokens, use a smaller "
                                        "--dtype, or a larger device") from None
                    rows = max(1, len(idx) // 2)
                    tokens = len(ids[idx[0]]) + params.max_new_tokens
                    self._token_budget = rows * tokens * n_seq
                    stats["oom_retries"] += 1
                    logging.getLogger(__name__).warning("out of memory at %d prompts a batch; retrying with %d",
                                                        len(idx), rows)
                    continue
                for j, i in enumerate(idx):
                    got = []
                    for row in new[j * n_seq:(j + 1) * n_seq]:
                        kept, count = self._trim(row)
                        stats["new_tokens"] += count
                        got.append(self.tokenizer.decode(kept, skip_special_tokens=True).strip())
                    out[i] = got if sample else got * params.n
                pos += len(idx)
                b += 1
                bar.advance(task, len(idx))
        stats.update(batches=b, final_batch_rows=rows, prompt_passes=self._prompt_passes,
                     seconds=round(time.perf_counter() - t0, 3))
        self.last_stats = stats
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


BACKENDS = ("auto", "local", "http", "vllm")
_HTTP_KEYS = {"timeout", "max_retries", "concurrency", "show_progress"}
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
    Keyword arguments a backend does not take are ignored, so callers can pass one set of options.
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
        return OpenAIGenerator(base_url, str(model or "default"), api_key=api_key,
                               **{k: v for k, v in kwargs.items() if k in _HTTP_KEYS})
    return LocalGenerator.from_name(model, **{k: v for k, v in kwargs.items() if k in _LOCAL_KEYS})
