"""Prompts of very different lengths in one batch: encoded in groups of similar length (cada's LocalGenerator) vs
one pass at the longest prompt's width. The demo's first self-generation chunk: 24 harmful training-pool prompts
(a quarter wrapped in in-the-wild jailbreak templates, up to ~1,300 tokens) and 8 benign ones, one batch of 32,
n 2 samples at T 0.9 / top-p 0.95 up to 40 new tokens, ``cases`` mode (top-3 precedents) and ``codes`` mode (the
~3.2k-token rules prefix, shared); plus greedy answers in ``none`` mode, which must be the same text both ways.
The embedded model on the CPU.

    python benchmarks/ragged_prompts.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--modes", default="cases,codes,none")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ways", default="one-pass,grouped", help="which encodings to time (the one-pass encoding of "
                    "a codes chunk takes ~8 minutes on 2 cores)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ragged_prompts.json")
    a = ap.parse_args()

    from cada.config import AlignConfig, PoolConfig
    from cada.models.local import LocalGenerator, SamplingParams, ragged_groups, shared_prefix_len
    from cada.pipeline.pools import prepare_pools
    from cada.reasoning import Mode, SafetyReasoner
    from cada.spec.schema import load_spec

    spec = load_spec(None)
    with tempfile.TemporaryDirectory() as tmp:  # the demo's pools: 24 prompts per label, harmful first
        train, _, _ = prepare_pools(AlignConfig(pool=PoolConfig(limit_per_label=24, heldout_per_label=50)),
                                    Path(tmp), spec)
    prompts = [p.prompt for p in train[:a.prompts]]
    gen = LocalGenerator.from_name("smollm2-135m", batch_size=a.prompts, show_progress=False)
    # modes measured by an earlier run are kept (one mode at a time fits a short session)
    result: dict = json.loads(a.out.read_text()) if a.out.exists() else {"modes": {}}
    result["settings"] = {k: str(v) for k, v in vars(a).items()}
    ways = [w == "grouped" for w in a.ways.split(",")]
    for mode in a.modes.split(","):
        msgs, _ = SafetyReasoner(spec, Mode(mode), k=3).messages(prompts)
        ids = [gen.tokenizer(gen.render(m), add_special_tokens=False)["input_ids"] for m in msgs]
        p = shared_prefix_len(ids)
        own = [len(i) - p for i in ids]
        groups = ragged_groups(own)
        info = {"shared_prefix_tokens": p, "prompt_tokens": sum(own), "padded_prompt_tokens": max(own) * len(own),
                "groups": [len(g) for g in groups], "runs": []}
        greedy = mode == "none"
        params = SamplingParams(max_new_tokens=a.max_new_tokens) if greedy else \
            SamplingParams(max_new_tokens=a.max_new_tokens, n=2, temperature=0.9, top_p=0.95)
        gen.generate(msgs[:1], SamplingParams(max_new_tokens=1))  # the shared prefix encoded before timing
        texts = {}
        for _ in range(a.repeats):  # interleaved, so a busy moment of the machine hits both
            for ragged in ways:
                gen.ragged = ragged
                t = time.perf_counter()
                texts[ragged] = gen.generate(msgs, params)
                info["runs"].append({"grouped": ragged, "seconds": round(time.perf_counter() - t, 1),
                                     "prompt_passes": gen.last_stats["prompt_passes"],
                                     "new_tokens": gen.last_stats["new_tokens"]})
                print(mode, info["runs"][-1], flush=True)
        before = result["modes"].get(mode, {})
        info["runs"] = [r for r in before.get("runs", []) if r["grouped"] not in ways] + info["runs"]
        best = {r: min((x["seconds"] for x in info["runs"] if x["grouped"] is r), default=None) for r in (False, True)}
        info["best_seconds"] = {"one_pass": best[False], "grouped": best[True]}
        if best[False] and best[True]:
            info["speedup"] = round(best[False] / best[True], 2)
        if greedy and len(texts) == 2:
            info["greedy_text_identical"] = texts[False] == texts[True]
        result["modes"][mode] = info
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
        print(mode, {k: v for k, v in info.items() if k != "runs"}, flush=True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
