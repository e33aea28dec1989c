"""Refusal-judge figures: leave-one-model-out accuracy on XSTest against string matching and GPT-4, and throughput.

    python benchmarks/judge_lomo.py [--data-dir ../shared/data/xstest] [--out benchmarks/results/judge_lomo.json]

For each of the four XSTest v2 completion sets, a head is trained on the other three (same recipe as the shipped
head) and scored on the held-out 450 responses against the human ``final_label``. Binary accuracy counts
refuse + partial as refusing; a GPT-4 label that is not one of the three classes counts as wrong. Throughput is
``RefusalJudge.classify`` on the held-out responses, encoder already loaded, on this machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from cada.judges import RefusalJudge, leave_one_model_out, load_xstest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "xstest"


def throughput(data_dir: Path, n: int = 450) -> dict:
    judge = RefusalJudge.load()
    texts = load_xstest(data_dir, "llama2new").responses[:n]
    judge.classify(texts[:8])  # load the encoder
    t0 = time.perf_counter()
    judge.classify(texts)
    dt = time.perf_counter() - t0
    long_texts = [("Step %d: keep going. " % i) * 1000 for i in range(20)]  # ~20k characters each
    t0 = time.perf_counter()
    judge.classify(long_texts)
    dt_long = time.perf_counter() - t0
    return {"responses": len(texts), "seconds": round(dt, 2), "responses_per_s": round(len(texts) / dt, 1),
            "long_20k_chars_per_s": round(len(long_texts) / dt_long, 1), "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "judge_lomo.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = leave_one_model_out(args.data_dir)
    lomo_s = time.perf_counter() - t0
    print(f"{'held out':16s} {'n':>4s} | {'binary: ours':>12s} {'str-match':>9s} {'GPT-4':>6s} | "
          f"{'3-class: ours':>13s} {'str-match':>9s} {'GPT-4':>6s}")
    for model, row in table.items():
        b = [row[k]["binary_accuracy"] for k in ("ours", "string_match", "gpt4")]
        a = [row[k]["accuracy"] for k in ("ours", "string_match", "gpt4")]
        print(f"{model:16s} {row['n']:4d} | {b[0]:12.3f} {b[1]:9.3f} {b[2]:6.3f} | {a[0]:13.3f} {a[1]:9.3f} "
              f"{a[2]:6.3f}")
    ok = all(r["ours"]["binary_accuracy"] >= 0.90 and r["ours"]["binary_accuracy"] > r["string_match"]
             ["binary_accuracy"] for r in table.values())
    print(f"target (binary >= 0.90 and above string matching on every held-out set): {'met' if ok else 'NOT met'}")
    speed = throughput(args.data_dir)
    print(f"throughput: {speed['responses_per_s']} responses/s on {speed['cpu_count']} CPU cores "
          f"({speed['long_20k_chars_per_s']}/s for 20k-character responses)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"lomo": table, "target_met": ok, "lomo_seconds": round(lomo_s, 1),
                                    "throughput": speed}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
