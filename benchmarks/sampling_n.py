"""n samples per prompt: each prompt encoded once and its cache copied (cada's LocalGenerator) vs generate's own
``num_return_sequences`` (n copies encoded). Self-generation's shape: 16 XSTest prompts in ``cases`` mode with the
top-3 precedents (~500 tokens each), T 0.9, top-p 0.95, up to 40 new tokens, the embedded model on the CPU.

    python benchmarks/sampling_n.py --n 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sampling_n.json")
    a = ap.parse_args()

    from cada.data.benchmarks import load_benchmark
    from cada.models import LocalGenerator, SamplingParams
    from cada.reasoning import Mode, SafetyReasoner
    from cada.spec.schema import load_spec

    items = [it.prompt for it in load_benchmark("xstest-safe")[:a.prompts]]
    msgs, _ = SafetyReasoner(load_spec(None), Mode.cases, k=3).messages(items)
    gen = LocalGenerator.from_name("smollm2-135m", batch_size=a.prompts, show_progress=False, prefix_cache=False)
    params = SamplingParams(max_new_tokens=a.max_new_tokens, n=a.n, temperature=0.9, top_p=0.95)
    rows = []
    for _ in range(a.repeats):  # interleaved, so a busy moment of the machine hits both
        for once in (False, True):
            gen.encode_once = once
            t = time.perf_counter()
            gen.generate(msgs, params)
            rows.append({"encode_once": once, "seconds": round(time.perf_counter() - t, 1),
                         "new_tokens": gen.last_stats["new_tokens"]})
            print(rows[-1], flush=True)
    best = {once: min(r["seconds"] for r in rows if r["encode_once"] is once) for once in (False, True)}
    result = {"settings": {k: str(v) for k, v in vars(a).items()}, "runs": rows,
              "best_seconds": {"n_copies": best[False], "encode_once": best[True]},
              "speedup": round(best[False] / best[True], 2)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}: {result['best_seconds']}, {result['speedup']}x")


if __name__ == "__main__":
    main()
