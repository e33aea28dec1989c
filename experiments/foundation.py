"""Where does the embedded model start from? Its keyword refusal rate per reasoning mode (none, codes, cases) on
training-pool prompts, with its load time and generation throughput on this machine.

Result: ``experiments/results/foundation.json``, from

    python experiments/foundation.py                       # --prompts 50 --max-new-tokens 200 --k 6, the defaults

Written to ``--out`` (default ``experiments/results/foundation.json``). The speed figures are the first ones the
project recorded; ``benchmarks/generation.py`` measures generation speed properly (against a naive baseline).

Load time "first" converts the GGUF in a fresh, temporary CADA_HOME; "cached" reloads the converted folder in a new
process. Throughput counts generated tokens (up to each sequence's end-of-turn) per wall second, greedy. The
refusal rates use the keyword (string-match) judge on prompts of the *training* pools only: Do-Not-Answer
(harmful) and CoCoNot contrast (benign look-alikes), every k-th row, so no evaluation prompt is involved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _timed_subprocess(code: str, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def load_times() -> dict:
    code = "from cada.models import load_model; load_model('smollm2-135m')"
    base = _timed_subprocess("import cada.models.load, torch, transformers", dict(os.environ))
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "CADA_HOME": home, "HF_HUB_OFFLINE": "1"}
        first = _timed_subprocess(code, env)
        cached = _timed_subprocess(code, env)
    return {"first_s": round(first - base, 2), "cached_s": round(cached - base, 2),
            "import_overhead_s": round(base, 2), "note": "process start and imports subtracted"}


def throughput(gen, batch: int, max_new_tokens: int = 128) -> dict:
    from cada.models import SamplingParams

    topics = ["rivers", "volcanoes", "bread", "chess", "owls", "trains", "jazz", "glaciers"]
    chats = [[{"role": "user", "content": f"Write a short paragraph about {topics[i % len(topics)]} "
               f"(variant {i})."}] for i in range(batch)]
    gen.batch_size = batch
    gen.generate(chats[:1], SamplingParams(max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    outs = gen.generate(chats, SamplingParams(max_new_tokens=max_new_tokens))
    dt = time.perf_counter() - t0
    tokens = sum(len(gen.tokenizer(o[0], add_special_tokens=False)["input_ids"]) for o in outs)
    return {"batch": batch, "tokens": tokens, "seconds": round(dt, 2), "tok_per_s": round(tokens / dt, 1)}


def training_pool_prompts(n: int) -> list[tuple[str, str]]:
    harmful, benign = [], []
    for f in sorted((DATA / "do_not_answer").glob("*.jsonl")):
        harmful += [json.loads(x)["prompt"] for x in f.open(encoding="utf-8")]
    benign = [json.loads(x)["prompt"] for x in (DATA / "coconot" / "coconot_contrast_eval.jsonl").open()]
    h, b = n // 2, n - n // 2
    pick = lambda xs, k: [xs[i * len(xs) // k] for i in range(k)]  # noqa: E731 - evenly spaced, deterministic
    return [(p, "harmful") for p in pick(harmful, h)] + [(p, "benign") for p in pick(benign, b)]


def refusal_by_mode(gen, n_prompts: int, max_new_tokens: int, k: int) -> dict:
    from cada.judges.refusal import string_match_label
    from cada.models import SamplingParams
    from cada.reasoning import Mode, SafetyReasoner
    from cada.spec import load_spec

    spec = load_spec()
    items = training_pool_prompts(n_prompts)
    prompts = [p for p, _ in items]
    gen.batch_size = 16
    out = {}
    for mode in Mode:
        t0 = time.perf_counter()
        res = SafetyReasoner(spec, mode, k=k).run(gen, prompts, SamplingParams(max_new_tokens=max_new_tokens))
        dt = time.perf_counter() - t0
        refused = {"harmful": [], "benign": []}
        for (_, label), r in zip(items, res):
            refused[label].append(string_match_label(r[0].response) != "comply")
        out[mode.value] = {
            "harmful_refusal": round(sum(refused["harmful"]) / len(refused["harmful"]), 3),
            "benign_refusal": round(sum(refused["benign"]) / len(refused["benign"]), 3),
            "all_refusal": round(sum(refused["harmful"] + refused["benign"]) / len(items), 3),
            "format_ok": round(sum(r[0].format_ok for r in res) / len(res), 3),
            "seconds": round(dt, 1),
        }
        print(mode.value, out[mode.value], flush=True)
    return {"n_prompts": len(items), "pools": "25 Do-Not-Answer (harmful) + 25 CoCoNot contrast (benign)",
            "judge": "keyword string match", "k": k, "max_new_tokens": max_new_tokens, "by_mode": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--skip", nargs="*", default=[], choices=["load", "throughput", "refusal"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "foundation.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from cada.models import LocalGenerator

    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"}
    if "load" not in args.skip:
        result["load"] = load_times()
        print("load", result["load"], flush=True)
    gen = LocalGenerator.from_name("smollm2-135m", show_progress=False)
    if "throughput" not in args.skip:
        result["throughput"] = [throughput(gen, b) for b in (1, 32)]
        print("throughput", result["throughput"], flush=True)
    if "refusal" not in args.skip:
        result["refusal"] = refusal_by_mode(gen, args.prompts, args.max_new_tokens, args.k)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
