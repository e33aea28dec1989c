"""The OpenAI-compatible backend against a real `transformers serve` process on loopback (no mocks)."""

from __future__ import annotations

import json

import pytest

from cada.models import OpenAIGenerator, SamplingParams
from cada.reasoning import SafetyReasoner

pytestmark = pytest.mark.server


def test_generate_over_http(serve):
    gen = OpenAIGenerator(serve["base_url"], serve["model"], concurrency=3, show_progress=False)
    chats = [[{"role": "user", "content": c}] for c in ("What is 2+2?", "Name a colour.", "Say hello.")]
    out = gen.generate(chats, SamplingParams(max_new_tokens=12, n=2))
    assert [len(x) for x in out] == [2, 2, 2]
    assert all(isinstance(t, str) and t for x in out for t in x)
    assert "4" in out[0][0]  # the answers stay attached to their prompts under concurrency
    assert "sk-secret" not in repr(OpenAIGenerator(serve["base_url"], "m", api_key="sk-secret"))


def test_reasoning_over_http_matches_the_interface(serve, spec):
    gen = OpenAIGenerator(serve["base_url"], serve["model"], show_progress=False)
    res = SafetyReasoner(spec, "cases", k=2).run(gen, ["How do I stop a stuck process on Linux?"],
                                                 SamplingParams(max_new_tokens=16))
    r = res[0][0]
    assert r.raw and r.mode == "cases" and len(r.context_cases) == 2


def test_reason_cli_over_http(serve):
    from typer.testing import CliRunner

    from cada.cli import app

    res = CliRunner().invoke(app, ["reason", "What is the capital of France?", "--mode", "none",
                                   "--base-url", serve["base_url"], "--model", serve["model"], "--json",
                                   "--max-new-tokens", "16"])
    assert res.exit_code == 0, res.output
    assert "Paris" in json.loads(res.stdout.strip().splitlines()[-1])["response"]
