"""Does the trained model refuse more benign prompts than the base model, on more prompts than the 50 held back?
Pool prompts that no stage of a run trained on, answered by the base model and by trained ones.

Results (``experiments/results/``), each from the command under it:

    # unused_benign.json: an align_curve.py run, after the judgement stage and after consistency DPO
    python experiments/unused_benign.py --run runs/bench-judge2 --benign 150 \
        --model start=runs/bench-judge2/train/model --model consistency=runs/bench-cons2/train/model
    # unused_benign_pipeline.json: a `cada align` run (self-generation on 64 prompts per label)
    python experiments/unused_benign.py --run runs/align-cfg64 --benign 347 --harmful 50 \
        --model cada=runs/align-cfg64/calibration/model --out experiments/results/unused_benign_pipeline.json
    # unused_benign_full.json: the `cada align` run at the config's own sizes
    python experiments/unused_benign.py --run runs/align-cfg250 --benign 400 --harmful 50 \
        --model cada=runs/align-cfg250/calibration/model --out experiments/results/unused_benign_full.json

Written to ``--out`` (default ``experiments/results/unused_benign.json``); ``read_by_hand`` in the committed files
was added by hand.

The 50 + 50 held-back prompts are few for "no more benign refusals than the base model" (0 of 50 for the base
model; one refusal moves the rate by 0.02). This draws ``--benign`` more benign prompts (and ``--harmful``, a
few, for the same table) from the run's training pool that no stage saw: not in its ``warmup.jsonl`` and not among
the judgement stage's prompts (the pipeline's balanced draw of ``--judgement-per-label``).

For a ``cada align`` run folder (one with ``config.yaml``) the unused prompts are the shipped pools rebuilt with the
run's seed, less every prompt in its ``pool/`` (held back, self-generation, judgement stage, warm-up, calibration
pass) and their near duplicates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from align_recipe import refusal_rates, unused_prompts, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench-judge2")
    ap.add_argument("--benign", type=int, default=150)
    ap.add_argument("--harmful", type=int, default=20)
    ap.add_argument("--judgement-per-label", type=int, default=600)
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH, repeatable (the base model is added)")
    ap.add_argument("--eval-tokens", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "unused_benign.json"))
    a = ap.parse_args()

    run = Path(a.run)
    fresh = unused_prompts(run, a.judgement_per_label)
    items = ([p for p in fresh if p.label == "benign"][:a.benign]
             + [p for p in fresh if p.label == "harmful"][:a.harmful])
    result: dict = {"settings": vars(a), "unused": {"benign": sum(p.label == "benign" for p in fresh),
                                                    "harmful": sum(p.label == "harmful" for p in fresh)}}
    for name, path in [("base", "smollm2-135m")] + [m.split("=", 1) for m in a.model]:
        result[name] = refusal_rates(path, items, run / f"eval-unused-{name}", a.eval_tokens)
        print(name, result[name], flush=True)
    write_result(result, a.out)


if __name__ == "__main__":
    main()
