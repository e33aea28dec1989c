"""The speed scripts run (behaviour only: no timing is asserted) and the fast path keeps its promises at scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_gpu_check_imports_and_guards_cuda(tmp_path):
    import torch

    assert _run("benchmarks/gpu_check.py", "--help").returncode == 0
    if not torch.cuda.is_available():
        r = _run("benchmarks/gpu_check.py", "--out", str(tmp_path / "x.json"))
        assert r.returncode == 2 and "no CUDA device" in r.stderr
        assert not (tmp_path / "x.json").exists()


def test_gpu_check_smoke_on_cpu_with_a_weightless_folder(tmp_path, tiny_model):
    """The whole GPU script on the CPU: a config+tokenizer folder gets random weights, every step reports."""
    skel = tmp_path / "skel"
    assert _run("benchmarks/gpu_check.py", "--export-skeleton", str(skel), "--model", tiny_model).returncode == 0
    assert not list(skel.glob("*.safetensors")) and (skel / "config.json").is_file()
    out = tmp_path / "gpu.json"
    r = _run("benchmarks/gpu_check.py", "--model", str(skel), "--allow-cpu", "--batch", "3", "--max-new-tokens", "3",
             "--prefix-prompts", "2", "--prefix-max-new-tokens", "2", "--skip", "dpo", "--dpo-steps", "4",
             "--dpo-batch", "2", "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["weights"] == "random"
    sec = res["sections"]
    assert sec["hf"]["tokens"] == sec["cada"]["tokens"] > 0
    assert sec["prefix"]["prefix_cache"]["prefix_tokens"] > 2000 and sec["prefix"]["greedy_agreement"] == 1.0
    assert "vllm" in sec  # skipped (not installed) or measured, never silently absent
    # full fine-tuning trains float32 weights and moves them
    assert sec["dpo_full"]["weights_dtype"] == "float32" and sec["dpo_full"]["share_of_weights_changed"] > 0.1, sec


def test_generation_benchmark_demo_summary_only(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"timings": {"eval base": 30.0, "selfgen": 90.0, "train cada": 60.0}}))
    out = tmp_path / "g.json"
    r = _run("benchmarks/generation.py", "--only", "none", "--demo-summary", str(summary), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "selfgen" in r.stdout.splitlines()[1]  # the longest stage first
    assert json.loads(out.read_text())["demo_summary"]["total_s"] == 180.0


@pytest.mark.parametrize("batch_size", [2, 8])
def test_fast_path_sampling_is_reproducible_and_batch_shaped(tiny_generator, batch_size):
    from cada.models import LocalGenerator, SamplingParams

    gen = LocalGenerator(tiny_generator.model, tiny_generator.tokenizer, batch_size=batch_size,
                         show_progress=False)
    chats = [[{"role": "user", "content": f"topic {i} " * (i % 5 + 1)}] for i in range(9)]
    p = SamplingParams(max_new_tokens=4, temperature=0.8, n=2, seed=3)
    a = gen.generate(chats, p)
    assert [len(x) for x in a] == [2] * 9 and a == gen.generate(chats, p)
    st = gen.last_stats
    assert st["sequences"] == 18 and st["batches"] == -(-9 // batch_size) and 0 < st["new_tokens"] <= 18 * 4
