"""The local transformers backend: :class:`LocalGenerator`, ``generate`` made fast for cada's workload, and the
helpers only it uses (ragged prompt groups, batch sizing for memory, out-of-memory detection).
The shared-prefix KV cache it uses lives in :mod:`cada.models.shared_prefix`.
"""

from __future__ import annotations

from collections.abc import Sequence

from cada.errors import CadaError
from cada.models.generate import Messages, SamplingParams, cut_at_stop, end_of_turn_ids, progress_bar
from cada.models.shared_prefix import (
    PREFIX_ATTN,
    PREFIX_KV,
    register_shared_prefix_attention,
    shared_prefix_cache,
    shared_prefix_layer_class,
    shared_prefix_len,
)


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


class LocalGenerator:
    """transformers ``generate``, made fast for cada's workload.

    * left padding and length-sorted batches (longest first, so an out-of-memory error shows up early);
    * stops at the chat template's end of turn as well as at eos (:func:`~cada.models.generate.end_of_turn_ids`);
    * **shared-prefix KV cache**: when every prompt of a call starts with the same long token prefix (the system
      prompt with the spec: ~3.2k tokens in ``codes`` mode, ~4.4k in ``cases`` mode with all precedents) the prefix
      is encoded once and its keys/values are reused by every batch, laid out as ``[prefix][left pad][suffix]``
      with the pads masked out, so positions and attention are exactly those of the plain path. The latest prefix
      is kept for later calls that start with it (resumable stages call ``generate`` once per chunk). The prefix
      is held once for all rows: each decoding step reads it once, not once per row
      (:func:`~cada.models.shared_prefix.shared_prefix_attention`), and each batch's own cache is allocated once
      and written in place (:func:`~cada.models.shared_prefix.shared_prefix_layer_class`). Used when the prefix
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
        self.encode_once = True  # n samples: encode each prompt once (False: generate's n copies; for benchmarks)
        self.ragged = True  # encode prompts of very different lengths in groups (False: one pass; for benchmarks)
        self._prompt_passes = 0  # forward passes that encoded prompts in the latest call (0: generate did)
        self._context_length: int | None = None  # set to override what the model and tokenizer say
        self.last_stats: dict = {}

    @classmethod
    def from_name(cls, model: str | None = None, *, device: str | None = None, dtype: str | None = None,
                  trust_remote_code: bool = False, **kwargs) -> "LocalGenerator":
        from cada.models.load import load_model

        m, tok = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(m, tok, name=str(model or "smollm2-135m"), **kwargs)

    can_continue = True  # continues a chat's final assistant message (PAIR's attacker prefill)

    def render(self, messages: Messages) -> str:
        if messages and messages[-1].get("role") == "assistant":  # a prefill: continue it, no new turn
            return self.tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # -- the model's context ---------------------------------------------------------------------

    @property
    def context_length(self) -> int | None:
        """Tokens the model takes (prompt plus new): the smaller of the config's ``max_position_embeddings`` and
        the tokenizer's ``model_max_length``, each only when sane (transformers sets ~1e30 when it is unknown);
        None when neither is known. Settable (``gen.context_length = 4096``)."""
        if self._context_length is not None:
            return self._context_length
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        found = [getattr(text, "max_position_embeddings", None), getattr(self.tokenizer, "model_max_length", None)]
        sane = [int(v) for v in found if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 10**7]
        return min(sane) if sane else None

    @context_length.setter
    def context_length(self, value: int | None) -> None:
        self._context_length = None if value is None else int(value)

    def _token_ids(self, prompts: Sequence[Messages]) -> list[list[int]]:
        texts = [self.render(m) for m in prompts]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def _over(self, ids: list[list[int]], max_new_tokens: int) -> list[int]:
        limit = self.context_length
        if limit is None:
            return []
        return [i for i, row in enumerate(ids) if len(row) + max_new_tokens > limit]

    def too_long(self, prompts: Sequence[Messages], max_new_tokens: int = SamplingParams.max_new_tokens) -> list[int]:
        """Indices of the ``prompts`` whose tokens plus ``max_new_tokens`` exceed the model's context
        (:attr:`context_length`): the ones :meth:`generate` would cut, for callers that name their rows first."""
        return self._over(self._token_ids(prompts), max_new_tokens)

    def _fit_context(self, ids: list[list[int]], max_new_tokens: int) -> list[int]:
        """Cut, in place, the prompts that do not fit the context with ``max_new_tokens`` new tokens; one warning
        for the call names them. Returns their indices.

        The middle is dropped, keeping the first and the last half of what fits: the start holds the system
        prompt (the spec cada's modes reason over, and the prefix the prompts share), the end holds the request's
        last words and the assistant header the model answers after. Cutting either end would lose one of them.
        """
        over = self._over(ids, max_new_tokens)
        if not over:
            return over
        limit = self.context_length
        budget = limit - max_new_tokens
        if budget < 16:
            raise CadaError(f"max_new_tokens={max_new_tokens} leaves {max(budget, 0)} of the model's {limit} "
                            "context tokens for the prompt: lower --max-new-tokens")
        head = budget // 2
        lengths = {i: len(ids[i]) for i in over}
        for i in over:
            ids[i] = ids[i][:head] + ids[i][len(ids[i]) - (budget - head):]
        named = ", ".join(f"{i} ({lengths[i]} tokens)" for i in over[:10])
        more = f" and {len(over) - 10} more" if len(over) > 10 else ""
        import logging

        logging.getLogger(__name__).warning(
            "%d prompt%s too long for the model's context of %d tokens with max_new_tokens=%d: %s%s; each cut to "
            "%d tokens (the middle dropped, the start and the end kept)", len(over), "s" if len(over) > 1 else "",
            limit, max_new_tokens, named, more, budget)
        return over

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
        # (generate would encode n copies of each ~500-token `cases` prompt), and prompts of very different lengths
        # in groups of similar length (:meth:`_encode_prompts`)
        groups = ragged_groups(mask[:, p:-1].sum(-1).tolist()) if self.ragged else [list(range(len(rows)))]
        once = self.encode_once and not config.is_encoder_decoder and (n > 1 or len(groups) > 1)
        cache = None
        if p:
            cache = shared_prefix_cache(config, prefix_kv, len(rows) * (1 if once else n),
                                        p + width + gen_kwargs["max_new_tokens"])
        elif once:
            from transformers import DynamicCache

            cache = DynamicCache(config=config)
        torch.manual_seed(seed)
        before = config._attn_implementation
        token = PREFIX_KV.set(prefix_kv if p else None)
        try:
            if p:  # the attention that reads the prefix once for all rows, for this call only
                register_shared_prefix_attention()
                config._attn_implementation = PREFIX_ATTN[before]
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
            PREFIX_KV.reset(token)
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
        plain = all(type(layer) in (DynamicLayer, shared_prefix_layer_class()) for layer in cache.layers)
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
                    part = shared_prefix_cache(self.model.config, prefix_kv, len(rows), start + w)
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

    def _generate_kwargs(self, params: SamplingParams, n_seq: int) -> dict:
        """The arguments of ``model.generate`` for ``params`` (``n_seq`` sequences per prompt)."""
        sample = params.temperature > 0
        kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=sample, num_return_sequences=n_seq,
                      pad_token_id=self.pad_id, eos_token_id=list(self.stop_ids) or None)
        if params.stop:  # generate stops a sequence at these; the text is cut before them after decoding
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        else:  # silence "temperature is set but do_sample=False" from the checkpoint's generation config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _halve_after_oom(self, rows: int, prompt_tokens: int, params: SamplingParams, n_seq: int) -> int:
        """The batch size to retry with after an out-of-memory error on ``rows`` prompts (the longest
        ``prompt_tokens`` long); the limit is kept for later calls. A single prompt that does not fit raises."""
        import logging

        import torch

        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        if rows == 1:
            raise CadaError(f"out of memory generating a single prompt of {prompt_tokens} tokens "
                            f"(+{params.max_new_tokens} new): lower --max-new-tokens, use a smaller "
                            "--dtype, or a larger device") from None
        smaller = max(1, rows // 2)
        self._token_budget = smaller * (prompt_tokens + params.max_new_tokens) * n_seq
        logging.getLogger(__name__).warning("out of memory at %d prompts a batch; retrying with %d", rows, smaller)
        return smaller

    def _decode(self, new, prompts: int, n_seq: int) -> tuple[list[list[str]], int]:
        """The texts of one batch's new tokens, ``n_seq`` per prompt, and the tokens generated (stops included)."""
        texts, tokens = [], 0
        for j in range(prompts):
            got = []
            for row in new[j * n_seq:(j + 1) * n_seq]:
                kept, count = self._trim(row)
                tokens += count
                got.append(self.tokenizer.decode(kept, skip_special_tokens=True).strip())
            texts.append(got)
        return texts, tokens

    # -- the call -------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Messages], params: SamplingParams = SamplingParams()) -> list[list[str]]:
        import time

        t0 = time.perf_counter()
        ids = self._token_ids(prompts)
        truncated = self._fit_context(ids, params.max_new_tokens)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: OOM shows up early
        out: list[list[str]] = [[] for _ in ids]
        sample = params.temperature > 0
        n_seq = params.n if sample else 1
        gen_kwargs = self._generate_kwargs(params, n_seq)

        memo = self._prefix_memo
        prefix, prefix_kv = self._shared_prefix(ids)
        stats = dict(prompts=len(ids), sequences=len(ids) * n_seq, new_tokens=0, batches=0, oom_retries=0,
                     prefix_tokens=len(prefix) if prefix_kv is not None else 0,
                     prefix_reused=prefix_kv is not None and memo is not None and prefix_kv is memo[1],
                     truncated=truncated)
        longest = len(ids[order[0]]) if order else 0
        self._prompt_passes = 0
        rows = self._rows_per_batch(longest + params.max_new_tokens, n_seq)
        stats["batch_rows"] = rows
        with progress_bar(disable=not self.show_progress) as bar:
            task = bar.add_task("generating", total=len(ids))
            pos = b = 0
            while pos < len(order):
                idx = order[pos:pos + rows]
                try:
                    new = self._generate_batch([ids[i] for i in idx], gen_kwargs, params.seed + b, prefix,
                                               prefix_kv)
                except Exception as e:
                    if not _is_oom(e):
                        raise
                    rows = self._halve_after_oom(len(idx), len(ids[idx[0]]), params, n_seq)
                    stats["oom_retries"] += 1
                    continue
                batch_texts, tokens = self._decode(new, len(idx), n_seq)
                if params.stop:
                    batch_texts = [[cut_at_stop(t, params.stop).strip() for t in got] for got in batch_texts]
                for i, got in zip(idx, batch_texts):
                    out[i] = got if sample else got * params.n
                stats["new_tokens"] += tokens
                pos += len(idx)
                b += 1
                bar.advance(task, len(idx))
        stats.update(batches=b, final_batch_rows=rows, prompt_passes=self._prompt_passes,
                     seconds=round(time.perf_counter() - t0, 3))
        self.last_stats = stats
        return out
