"""The paper's attacks and utility sets on the embedded model, CPU, timed (issue 27's numbers):

* PAIR with a small budget (2 streams x 3 iterations) on 20 StrongREJECT goals, the embedded model as attacker,
  judge and target (``cada attack pair``): wall time per goal, queries per goal, ASR by the judge and by the
  offline refusal judge, each with its 95% interval;
* PAP (Misrepresentation, 3 paraphrases a goal) on the same 20 goals (``cada attack pap``), the same figures;
* the base model's BBH (0-shot exact match) and MMLU (5-shot, answer-letter log-likelihood) subset accuracy and the
  wall time of each (``cada eval --benchmark bbh|mmlu``).

    python benchmarks/attacks_utility.py --out ~/cada-runs/attacks-utility [--only pair --only pap ...]

Each command resumes (rerun after a kill). Results: ``benchmarks/results/attacks_utility.json``; a rerun of a
finished step reads its figures back (its wall time is the first run's, kept in the results file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
STEPS = {
    "pair": ["attack", "pair", "--benchmark", "strongreject", "--limit", "20", "--streams", "2", "--iterations", "3",
             "--model", MODEL],
    "pap": ["attack", "pap", "--benchmark", "strongreject", "--limit", "20", "--technique", "misrepresentation",
            "--samples", "3", "--model", MODEL],
    "bbh": ["eval", "--benchmark", "bbh", "--model", MODEL, "--mode", "none", "--max-new-tokens", "64"],
    "mmlu": ["eval", "--benchmark", "mmlu", "--model", MODEL, "--mode", "none"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", action="append", choices=list(STEPS))
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "attacks_utility.json")
    a = ap.parse_args()
    results = json.loads(a.results.read_text()) if a.results.exists() else {}
    for name in a.only or list(STEPS):
        folder = a.out / name
        done = (folder / ("summary.json" if name in ("pair", "pap") else "metrics.json")).exists()
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cada.cli", *STEPS[name], "-o", str(folder)], check=True)
        seconds = round(time.perf_counter() - t, 1)
        entry = {"command": "cada " + " ".join(STEPS[name] + ["-o", str(folder)]),
                 "wall_seconds": results.get(name, {}).get("wall_seconds") if done else seconds}
        if name in ("pair", "pap"):
            s = json.loads((folder / "summary.json").read_text())
            entry.update({k: s.get(k) for k in ("n", "asr_judge", "asr_refusal_judge", "mean_best_score",
                                                 "queries_per_goal", "seconds_per_goal", "errors")})
        else:
            m = json.loads((folder / "metrics.json").read_text())
            m = m.get(name, m) if isinstance(m, dict) and name in m else m
            entry.update({"n": m.get("n"), "accuracy": m.get("accuracy")})
        results[name] = entry
        a.results.parent.mkdir(parents=True, exist_ok=True)
        a.results.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({name: entry}, indent=2))


if __name__ == "__main__":
    main()
