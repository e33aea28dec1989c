"""vLLM's offline engine as a cada generator (optional: ``pip install -e '.[vllm]'`` in the cada checkout, Linux + CUDA).

Same interface as the other backends::

    gen = VLLMGenerator("org/model-8b", tensor_parallel_size=8)
    texts = gen.generate(chats, SamplingParams(n=4, temperature=0.9, max_new_tokens=512))

vLLM batches continuously and caches shared prefixes (the spec in the system prompt) on its own. For a vLLM
*server* (``vllm serve MODEL``) use the OpenAI-compatible backend instead (``--base-url``); see docs/scaling.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from cada.errors import CadaError
from cada.models.generate import Messages, SamplingParams, continues

VLLM_MISSING = "vLLM is not installed: pip install -e '.[vllm]' in the cada checkout (Linux + CUDA)"
_DTYPES = {None: "auto", "auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
           "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def _vllm():
    try:
        import vllm
    except ImportError:
        raise CadaError(VLLM_MISSING) from None
    return vllm


class VLLMGenerator:
    """Chat conversations in, ``n`` texts each out, through ``vllm.LLM.chat`` (one engine per generator)."""

    def __init__(self, model: str | None = None, *, tensor_parallel_size: int = 1, dtype: str | None = None,
                 seed: int = 0, gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 trust_remote_code: bool = False, show_progress: bool = True, engine_kwargs: dict | None = None):
        vllm = _vllm()
        from cada.models.load import resolve_model

        if dtype not in _DTYPES:
            raise CadaError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        if tensor_parallel_size < 1:
            raise CadaError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        self.source = resolve_model(model)
        self.name = str(model or "smollm2-135m")
        self.show_progress = show_progress
        self.last_stats: dict = {}
        kwargs = dict(model=self.source, tensor_parallel_size=tensor_parallel_size, dtype=_DTYPES[dtype],
                      seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                      trust_remote_code=trust_remote_code)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(engine_kwargs or {})
        self.llm = vllm.LLM(**kwargs)
        from cada.models.generate import end_of_turn_ids

        # stop at the end of the assistant's turn, as the local backend does (vLLM alone stops at eos only, and a
        # model whose eos is <|endoftext|> would run on into an invented next turn)
        self.stop_ids = end_of_turn_ids(self.llm.get_tokenizer())

    can_continue = True  # vLLM's chat continues a final assistant message (continue_final_message)

    def __repr__(self) -> str:
        return f"VLLMGenerator(model={self.source!r})"

    def sampling_params(self, params: SamplingParams):
        """cada's :class:`SamplingParams` as vLLM's (greedy: one sequence, copied ``n`` times by ``generate``)."""
        vllm = _vllm()
        sample = params.temperature > 0
        return vllm.SamplingParams(n=params.n if sample else 1, temperature=params.temperature,
                                   top_p=params.top_p if sample else 1.0, max_tokens=params.max_new_tokens,
                                   seed=params.seed if sample else None, stop_token_ids=self.stop_ids or None,
                                   stop=list(params.stop) or None)

    def generate(self, prompts: Sequence[Messages], params: SamplingParams = SamplingParams()) -> list[list[str]]:
        import time

        if not prompts:
            return []
        t0 = time.perf_counter()
        prefill = continues(prompts)  # a final assistant message is continued, not answered
        outputs = self.llm.chat([list(m) for m in prompts], sampling_params=self.sampling_params(params),
                                use_tqdm=self.show_progress, add_generation_prompt=not prefill,
                                continue_final_message=prefill)
        if len(outputs) != len(prompts):
            raise CadaError(f"vLLM returned {len(outputs)} results for {len(prompts)} prompts")
        sample = params.temperature > 0
        result, tokens = [], 0
        for req in outputs:
            texts = [(c.text or "").strip() for c in req.outputs]
            tokens += sum(len(getattr(c, "token_ids", None) or ()) for c in req.outputs)
            result.append(texts if sample else texts[:1] * params.n)
        self.last_stats = dict(prompts=len(prompts), sequences=len(prompts) * (params.n if sample else 1),
                               new_tokens=tokens, seconds=round(time.perf_counter() - t0, 3))
        return result
