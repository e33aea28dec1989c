"""How fast does the SFT warm-up teach the embedded model to refuse? Keyword and offline-judge refusal on held-back
*training-pool* prompts vs warm-up examples seen.

Result: ``experiments/results/align_curve.json``. One run of this script writes one curve (``settings``, ``base``,
``curve``) to ``--out`` and a plot beside it. The default ``--out`` is that committed file, which a run replaces:
give another ``--out`` to keep it. The committed file gathers several such runs under ``runs``, each with the
command that produced it in ``settings.command`` (the first two ran an earlier form of the script), for example

    python experiments/align_curve.py --run runs/bench-pref --harmful 400 --benign 700 --lr 2e-5 --epochs 2 \
        --save-steps 128                                                            # ~55 min on 2 cores

``plot_align_curve.py`` draws all of them into ``align_curve.png``. The warm-ups that start from the judgement
stage (``--init``) are recorded in ``judgement_stage.json``.

Builds the warm-up set exactly as ``cada align`` does with ``warmup_per_label`` (harmful -> a refusal grounded in
the nearest precedent, benign -> the policy's own greedy answer to the bare request with a grounded "benign"
analysis; context-distilled, overlong examples dropped), fine-tunes the embedded model on it (full fine-tuning
by default, checkpoints every ``--save-steps``), and answers the held-back prompts (50 harmful + 50 benign, never
trained on) greedily with the bare request for the base model and every checkpoint. Prints and writes keyword
(string-match) and offline-judge refusal rates per label, and a plot beside the JSON. Its run folder (``--run``:
``pool/``, ``warmup.jsonl``, ``train/``) is what ``judgement_auc.py``, ``consistency_dpo.py``, ``unused_benign.py``
and ``decision_calibration.py`` read.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from align_recipe import refusal_rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench-curve")
    ap.add_argument("--harmful", type=int, default=400, help="warm-up prompts per label (harmful)")
    ap.add_argument("--benign", type=int, default=400)
    ap.add_argument("--lookalike-share", type=float, default=None,
                    help="share of the benign warm-up prompts taken from the CoCoNot sets (benign look-alikes); "
                         "default: the pool's own mix")
    ap.add_argument("--init", default="smollm2-135m",
                    help="model to fine-tune, e.g. a checkpoint of an earlier run to train it further (the held-back "
                         "base rates stay those of smollm2-135m)")
    ap.add_argument("--skip-checkpoints", type=int, default=0, help="evaluate only checkpoints after this step")
    ap.add_argument("--answer-tokens", type=int, default=96, help="budget of the benign direct answers")
    ap.add_argument("--eval-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--lora-r", type=int, default=0, help="0: full fine-tuning")
    ap.add_argument("--top-layers", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--save-steps", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "align_curve.json"))
    a = ap.parse_args()

    from cada.config import AlignConfig, PoolConfig, TrainConfig
    from cada.data.pools import LOOKALIKE_SOURCES
    from cada.datasets import fit_length, warmup_set
    from cada.models.local import LocalGenerator
    from cada.pipeline.pools import prepare_pools
    from cada.records import write_records
    from cada.selfgen import direct_answers
    from cada.spec import load_spec
    from cada.train import train

    run = Path(a.run)
    spec = load_spec()
    pool, held, _ = prepare_pools(AlignConfig(pool=PoolConfig(heldout_per_label=50)), run, spec)
    rng = random.Random(0)
    harm = [p for p in pool if p.label == "harmful"]
    ben = [p for p in pool if p.label == "benign"]
    rng.shuffle(harm)
    rng.shuffle(ben)
    harm = harm[:a.harmful]
    if a.lookalike_share is None:
        ben = ben[:a.benign]
    else:
        look = [p for p in ben if p.source in LOOKALIKE_SOURCES][:round(a.lookalike_share * a.benign)]
        ben = look + [p for p in ben if p.source not in LOOKALIKE_SOURCES][:a.benign - len(look)]
    result: dict = {"settings": vars(a), "curve": []}
    result["base"] = refusal_rates("smollm2-135m", held, run / "eval-base", a.eval_tokens)
    print("base", result["base"], flush=True)
    t0 = time.perf_counter()
    answers = direct_answers(ben, LocalGenerator.from_name("smollm2-135m", batch_size=32), run / "answers.jsonl",
                             a.answer_tokens)
    result["answer_seconds"] = round(time.perf_counter() - t0, 1)
    rows, dropped = fit_length(warmup_set(harm + ben, [], spec, "cases", answers), "smollm2-135m", a.max_length)
    write_records(run / "warmup.jsonl", rows)
    result["examples"] = {"total": len(rows), "benign": sum(r["label"] == "benign" for r in rows),
                          "dropped_too_long": dropped}
    t0 = time.perf_counter()
    train(a.init, run / "warmup.jsonl", run / "train", TrainConfig(
        method="sft", learning_rate=a.lr, epochs=a.epochs, batch_size=a.batch, lora_r=a.lora_r,
        top_layers=a.top_layers, max_length=a.max_length,
        extra={"save_strategy": "steps", "save_steps": a.save_steps, "save_total_limit": None,
               "save_only_model": True}))
    result["train_seconds"] = round(time.perf_counter() - t0, 1)
    for ck in sorted((run / "train" / "trainer").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        if a.lora_r or int(ck.name.split("-")[1]) <= a.skip_checkpoints:
            continue  # adapter checkpoints: only the merged final model is evaluated
        seen = int(ck.name.split("-")[1]) * a.batch
        point = {"examples_seen": min(seen, len(rows) * a.epochs),
                 **refusal_rates(str(ck), held, run / f"eval-{ck.name}", a.eval_tokens)}
        result["curve"].append(point)
        print(point, flush=True)
    if a.lora_r:
        result["curve"].append({"examples_seen": len(rows) * a.epochs, **refusal_rates(
            str(run / "train" / "model"), held, run / "eval-final", a.eval_tokens)})
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0] + [p["examples_seen"] for p in result["curve"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, color in (("harmful", "#c0392b"), ("benign", "#2471a3")):
        ys = [result["base"][label]["keyword_refusal"]] + [p[label]["keyword_refusal"] for p in result["curve"]]
        ax.plot(xs, ys, "o-", color=color, label=f"held-back {label}")
    ax.set(xlabel="training examples seen", ylabel="keyword refusal rate", ylim=(0, 1),
           title="Warm-up SFT on the embedded model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
