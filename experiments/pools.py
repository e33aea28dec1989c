"""What do the shipped training pools hold? Counts per source/label/category, jailbreak wrapping, the evaluation
overlap removed, build time, and how well the automatic labelling rule labels prompts of known label.

Result: ``experiments/results/pools.json``, from

    python experiments/pools.py                            # --seed 0 --jailbreak-share 0.25, the defaults

Written to ``--out`` (default ``experiments/results/pools.json``).

Build time is measured twice: "cold" in a fresh, temporary CADA_HOME (the sentence encoder loads and every pool
prompt is embedded) and "warm" (embeddings cached). The label check applies the HH-RLHF labelling rule to the two
dataset-labelled pools, whose true labels are known (Do-Not-Answer: harmful, CoCoNot contrast: benign), once with
the spec's precedents as the only references and once with the rule's references, leaving each prompt out of its
own vote.
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
from collections import Counter
from pathlib import Path

BUILD = ("import json, sys, time; t = time.perf_counter(); from cada.data.pools import build_pools; "
         "p = build_pools(jailbreak_share={share}, seed={seed}); "
         "print(json.dumps({{'seconds': time.perf_counter() - t}}))")


def build_seconds(seed: int, share: float, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", BUILD.format(seed=seed, share=share)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return round(json.loads(out.strip().splitlines()[-1])["seconds"], 1)


def label_rule_check(pools) -> dict:
    """Share labelled harmful on prompts of known label, for precedents-only references and the rule's references."""
    import numpy as np

    from cada.data import pools as P
    from cada.data.decontam import embed_cached
    from cada.spec import load_spec

    spec = load_spec()
    known = [p for p in pools.prompts if p.source in P.LABEL_REFERENCE_SOURCES]
    emb = embed_cached([p.base_prompt for p in known])
    case_sims = emb @ embed_cached([c.request for c in spec.cases]).T
    case_harmful = [c.verdict in P.HARMFUL_VERDICTS for c in spec.cases]
    pool_sims = emb @ emb.T
    np.fill_diagonal(pool_sims, -1.0)  # leave each prompt out of its own vote
    rules = {
        "precedents_only": P.auto_label(case_sims, case_harmful),
        "precedents_and_labelled_pools": P.auto_label(np.hstack([case_sims, pool_sims]),
                                                      case_harmful + [p.label == "harmful" for p in known]),
    }
    out = {}
    for name, labels in rules.items():
        out[name] = {src: round(sum(lab == "harmful" for p, lab in zip(known, labels) if p.source == src)
                                / sum(p.source == src for p in known), 3)
                     for src in sorted(P.LABEL_REFERENCE_SOURCES)}
    return {"share_labelled_harmful": out, "k": P.LABEL_K, "floor": P.LABEL_FLOOR,
            "note": "ideal: do_not_answer 1.0, coconot_contrast 0.0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jailbreak-share", type=float, default=0.25)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "pools.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cada.data.decontam import fingerprint
    from cada.data.pools import build_pools

    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as home:
        cold = build_seconds(args.seed, args.jailbreak_share, {**env, "CADA_HOME": home})
    warm_start = build_seconds(args.seed, args.jailbreak_share, env)  # fills the user cache if it was empty
    t0 = time.perf_counter()
    pools = build_pools(jailbreak_share=args.jailbreak_share, seed=args.seed)
    in_process = time.perf_counter() - t0

    removed_pairs = Counter(f"{r['source']} -> {r['eval_set']}" for r in pools.removed)
    examples: dict[str, list] = {}
    for r in pools.removed:
        if r["source"] != "jailbreak_template" and len(examples.setdefault(r["eval_set"], [])) < 3:
            # evaluation prompts (and pool prompts that duplicate them) stay out of the repository: fingerprints
            examples[r["eval_set"]].append({"prompt": fingerprint(r["prompt"]), "matched": fingerprint(r["matched"]),
                                            "kind": r["kind"], "similarity": r["similarity"]})
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
                   f"Python {platform.python_version()}",
        "seed": args.seed, "jailbreak_share": args.jailbreak_share,
        "build_seconds": {"cold_new_process": cold, "warm_new_process": warm_start,
                          "warm_in_process": round(in_process, 1),
                          "note": "cold: fresh CADA_HOME (encoder load + embedding); warm: cached embeddings"},
        "counts": pools.counts,
        "removed_by_source_and_eval_set": dict(sorted(removed_pairs.items())),
        "removed_examples": examples,
        "label_rule_check": label_rule_check(pools),
    }
    print(json.dumps({k: result[k] for k in ("machine", "build_seconds", "removed_by_source_and_eval_set",
                                             "label_rule_check")}, indent=2))
    c = pools.counts
    print(f"total {c['total']}  by source {c['by_source']}  by label {c['by_label']}  jailbroken {c['jailbroken']}")
    print(f"by source/label {c['by_source_label']}")
    print(f"by category {c['by_category']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
