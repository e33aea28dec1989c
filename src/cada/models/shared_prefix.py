"""The shared-prefix KV cache of :class:`~cada.models.local.LocalGenerator`: when every prompt of a call starts with
the same long token prefix, its keys/values are held once (batch 1) for all rows, and the model's attention reads
them from there (:func:`shared_prefix_attention`) for the duration of that call only.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Sequence

from cada.errors import CadaError


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


# the shared prefix's keys/values per layer (batch 1) while a LocalGenerator call runs with one; read by
# shared_prefix_attention, which the model's attention points at for the duration of that call only
PREFIX_KV: contextvars.ContextVar = contextvars.ContextVar("cada_prefix_kv", default=None)
# the attention implementation (and mask format) to switch to for such a call, by the model's own one
PREFIX_ATTN = {"sdpa": "cada_prefix_sdpa", "eager": "cada_prefix_eager"}


@functools.cache
def shared_prefix_layer_class():  # a function so that importing cada does not import transformers
    from transformers.cache_utils import DynamicLayer

    class SharedPrefixLayer(DynamicLayer):
        """A :class:`~transformers.cache_utils.DynamicLayer` whose first ``prefix_len`` positions are the shared
        prefix, held once for all rows by :func:`shared_prefix_attention`; only each row's own tokens are stored
        here, in place, in storage allocated once for the whole generation.

        Without it every row carries a copy of the prefix: with the ~3.2k-token ``codes`` prompt that is ~150 MB per
        row (float32, SmolLM2-135M), copied for every batch and read again at every new token. ``get_seq_length`` counts the prefix, so positions and masks are those of the plain path;
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


def fused_prompt_attention(device) -> bool:
    """Prompt chunks through the model's own kernel (prefix broadcast in) rather than the split matmuls: on GPUs,
    whose fused kernels need no scores in memory. On the CPU the split matmuls were faster."""
    return device.type != "cpu"


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
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

    prefix = PREFIX_KV.get()
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
    if q_len > 1 and fused_prompt_attention(query.device):  # prompt chunks on a GPU: its kernel, prefix broadcast
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
def register_shared_prefix_attention() -> None:
    """Register the shared-prefix attention beside ``sdpa`` and ``eager`` (each with its own mask format)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
    from transformers.models.llama.modeling_llama import eager_attention_forward

    for kind, plain, mask in (("sdpa", sdpa_attention_forward, sdpa_mask), ("eager", eager_attention_forward,
                                                                          eager_mask)):
        AttentionInterface.register(PREFIX_ATTN[kind], functools.partial(shared_prefix_attention, plain=plain))
        AttentionMaskInterface.register(PREFIX_ATTN[kind], mask)


def shared_prefix_cache(config, prefix_kv, rows: int, capacity: int):
    """A ``DynamicCache`` for ``rows`` rows over the shared prefix ``prefix_kv`` (keys/values per layer, batch 1):
    each layer a :func:`shared_prefix_layer_class` with room for ``capacity`` positions, the prefix's included."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    if len(cache.layers) != len(prefix_kv):
        raise CadaError("internal: prefix cache layers do not match the model")
    layer = shared_prefix_layer_class()
    cache.layers = [layer(k.shape[-2], k, rows, capacity - k.shape[-2]) for k, _ in prefix_kv]
    return cache
