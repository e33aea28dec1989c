"""CADA's online RL on the embedded model, end to end, timed: ``cada align`` with ``recipes/align-cada.yaml`` on
500 harmful BeaverTails prompts (variant ``harmful``, the paper's setting) and on 500 harmful + 500 benign
(variant ``mixed``: OR-Bench-80K look-alikes and Alpaca, helping rewarded), then the base and the trained model on
the look-alike validation prompts (``pool/validation.jsonl``, OR-Bench toxic and OR-Bench-80K, held back from
every stage: what the RL settings are chosen on; no evaluation benchmark is read here).

Reported per variant: wall time of the align run (its ``summary.json`` seconds, resumed invocations summed), the
steps, median seconds per step, of which sampling (generation, reward, the reference's log-probabilities: the
trainer's ``sample_seconds``) and the update (the rest); the reward and KL over the first and last tenth of the
steps (the learning curve, every step in ``round-1/train/train_log.jsonl``); and each model's refusal rate on the
validation prompts, bare requests (mode none), as the paper evaluates.

    python benchmarks/rl_run.py --out ~/cada-runs/rl-500 [--variant harmful --variant mixed] [--limit 500]
    python benchmarks/rl_run.py --out ~/cada-runs/rl-sweep --variant mixed --limit 100 \
        --set rl_train.learning_rate=5e-4 --name mixed-lr5e-4      # a recipe choice, read on validation only

Every step resumes: rerun the same command after a kill. Results: ``benchmarks/results/rl_run.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "align-cada.yaml"
VARIANTS = {
    "harmful": {},
    "mixed": {"pool": {"sources": ["beavertails", "or_bench_80k", "alpaca"]}, "rl": {"prompts": "mixed"}},
}


def merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def cada(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cada.cli", *args], check=True)


def curve(steps: list[dict], key: str) -> dict:
    vals = [s[key] for s in steps if s.get(key) is not None]
    if not vals:
        return {}
    tenth = max(1, len(vals) // 10)
    return {"first_tenth": round(statistics.mean(vals[:tenth]), 4), "last_tenth": round(statistics.mean(vals[-tenth:]),
                                                                                         4)}


def validation_files(run: Path) -> dict[str, Path]:
    rows = [json.loads(x) for x in (run / "pool" / "validation.jsonl").read_text().splitlines() if x.strip()]
    out = {}
    for label in ("harmful", "benign"):
        path = run / f"validation-{label}.jsonl"
        path.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows if r["label"] == label))
        out[label] = path
    return out


def evaluate(model: str, files: dict[str, Path], folder: Path, max_new_tokens: int) -> dict:
    res = {}
    for label, path in files.items():
        out = folder / label
        cada("eval", "--dataset", str(path), "--kind", label, "--model", model, "--mode", "none",
             "--max-new-tokens", str(max_new_tokens), "-o", str(out))
        m = json.loads((out / "metrics.json").read_text())
        res[label] = {"n": m["n"], "refusal_rate": m["refusal_rate"], "refused_or_partial_rate":
                      m["refused_or_partial_rate"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variant", action="append", choices=list(VARIANTS))
    ap.add_argument("--limit", type=int, default=500, help="prompts per label")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="validation answers")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe setting, e.g. rl_train.learning_rate=5e-4 (YAML value)")
    ap.add_argument("--name", help="results key and run folder (default: the variant)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "rl_run.json")
    a = ap.parse_args()
    recipe = yaml.safe_load(RECIPE.read_text())
    results = json.loads(a.results.read_text()) if a.results.exists() else {}
    overrides: dict = {}
    for item in a.set:
        key, _, value = item.partition("=")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    for variant in a.variant or ["harmful", "mixed"]:
        name = a.name or variant
        run = a.out / name
        run.mkdir(parents=True, exist_ok=True)
        cfg = merged(recipe, merged(VARIANTS[variant], merged({"pool": {"limit_per_label": a.limit}}, overrides)))
        (a.out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        cada("align", "--config", str(a.out / f"{name}.yaml"), "--output", str(run))
        summary = json.loads((run / "summary.json").read_text())
        log = [json.loads(x) for x in (run / "round-1" / "train" / "train_log.jsonl").read_text().splitlines()]
        steps = [s for s in log if "loss" in s and "step_time" in s]
        step_s = [s["step_time"] for s in steps]
        sample_s = [s["sample_seconds"] for s in steps if "sample_seconds" in s]
        files = validation_files(run)
        # the base model's answers are shared by the runs whose validation prompts are the same
        digest = hashlib.sha256(b"".join(files[k].read_bytes() for k in sorted(files))).hexdigest()[:10]
        base = evaluate(cfg["model"], files, a.out / f"eval-base-{digest}", a.max_new_tokens)
        trained = evaluate(summary["model"], files, run / "eval", a.max_new_tokens)
        results[name] = {
            "command": " ".join(["python benchmarks/rl_run.py --out", str(a.out), "--variant", variant, "--limit",
                                 str(a.limit), *(f"--set {x}" for x in a.set), *(["--name", name] if a.name else [])]),
            "config": cfg, "dataset": summary["rounds"][0].get("dataset"),
            "align_seconds": summary.get("seconds"), "steps": len(steps),
            "median_step_seconds": round(statistics.median(step_s), 1) if step_s else None,
            "median_sample_seconds": round(statistics.median(sample_s), 1) if sample_s else None,
            "median_update_seconds": round(statistics.median(s - g for s, g in zip(step_s, sample_s)), 1)
            if sample_s else None,
            "reward": curve(steps, "reward"), "kl": curve(steps, "kl"),
            "completion_length": curve(steps, "completions/mean_length"),
            "validation": {"base": base, "trained": trained},
        }
        a.results.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results[name], indent=2))


if __name__ == "__main__":
    main()
