"""Can DPO teach the answer to follow the analysis it comes after? Consistency pairs after the warm-up.

Results (``experiments/results/``), each from the command under it:

    # consistency_dpo.json: with TRL's NLL term on the chosen side                       ~45 min on 2 cores
    python experiments/consistency_dpo.py --from runs/bench-judge2 --run runs/bench-cons2 --lr 3e-6 --sft-weight 1
    # consistency_dpo_no_anchor.json: without it, at a higher learning rate
    python experiments/consistency_dpo.py --from runs/bench-judge2 --run runs/bench-cons --lr 1e-5 \
        --out experiments/results/consistency_dpo_no_anchor.json

Written to ``--out`` (default ``experiments/results/consistency_dpo.json``).

After the judgement stage and the warm-up the decision is right (held-back AUC 0.99), but a few benign answers
still end "### Final Response: I can't help with that." after a "This request is benign." analysis. This experiment
takes the warm-up rows of an earlier ``align_curve.py`` run (``--from``: its ``warmup.jsonl``, its trained model
``train/model`` and its held-back pool) and trains DPO pairs that differ only after the analysis:

- benign: chosen = the warm-up chain (benign analysis + the policy's own answer),
  rejected = the same analysis + the refusal;
- harmful: chosen = the warm-up chain (harmful analysis + refusal / support),
  rejected = the same analysis + the base model's own greedy answer to the bare request (self-generated, never
  written into the repository).

The shared analysis cancels out of the DPO margin, so the gradient lands on the response given the decision. The
held-back prompts (50 + 50, never trained on) are answered greedily before and after, as in ``align_curve.py``.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from align_recipe import refusal_rates, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", default="runs/bench-judge2",
                    help="an align_curve.py run folder (warmup.jsonl, train/model, pool/heldout.jsonl)")
    ap.add_argument("--model", default=None, help="policy to start from (default: <from>/train/model)")
    ap.add_argument("--run", default="runs/bench-cons")
    ap.add_argument("--per-label", type=int, default=250)
    ap.add_argument("--answer-tokens", type=int, default=64, help="budget of the base model's harmful answers")
    ap.add_argument("--eval-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--sft-weight", type=float, default=0.0,
                    help="add TRL's NLL loss on the chosen side with this weight (RPO); keeps the format when the "
                         "pairs are easy and the DPO margin saturates")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--eval-start", action="store_true", help="also answer the held-back prompts with the start model")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "consistency_dpo.json"))
    a = ap.parse_args()

    from cada.config import TrainConfig
    from cada.data.pools import read_pool
    from cada.datasets import REFUSAL
    from cada.models.local import LocalGenerator
    from cada.reasoning import FINAL_HEADER
    from cada.records import read_records, write_records
    from cada.selfgen import direct_answers
    from cada.train import train

    src, run = Path(a.src), Path(a.run)
    model = a.model or str(src / "train" / "model")
    held = read_pool(src / "pool" / "heldout.jsonl")
    rows = read_records(src / "warmup.jsonl")
    rng = random.Random(0)
    rng.shuffle(rows)
    harm = [r for r in rows if r["label"] == "harmful"][:a.per_label]
    ben = [r for r in rows if r["label"] == "benign"][:a.per_label]
    result: dict = {"settings": {**vars(a), "model": model}}

    class _P:  # direct_answers takes pool prompts; warm-up rows carry the same id and text
        def __init__(self, r):
            self.id, self.prompt = r["id"], r["prompt"][0]["content"]

    t0 = time.perf_counter()
    answers = direct_answers([_P(r) for r in harm], LocalGenerator.from_name("smollm2-135m", batch_size=32),
                             run / "harmful_answers.jsonl", a.answer_tokens)
    result["answer_seconds"] = round(time.perf_counter() - t0, 1)

    pairs = []
    for r in harm + ben:
        text = r["completion"][0]["content"]
        analysis = text.split(FINAL_HEADER)[0]
        wrong = REFUSAL if r["label"] == "benign" else answers[r["id"]].strip()
        if not wrong:
            continue
        pairs.append({"id": r["id"], "label": r["label"], "prompt": r["prompt"],
                      "chosen": [{"role": "assistant", "content": text}],
                      "rejected": [{"role": "assistant", "content": f"{analysis}{FINAL_HEADER}\n{wrong}"}]})
    rng.shuffle(pairs)
    write_records(run / "pairs.jsonl", pairs)
    result["pairs"] = {"total": len(pairs), "benign": sum(p["label"] == "benign" for p in pairs)}
    print(result["pairs"], flush=True)

    if a.eval_start:
        result["start"] = refusal_rates(model, held, run / "eval-start", a.eval_tokens)
        print("start", result["start"], flush=True)
    t0 = time.perf_counter()
    train(model, run / "pairs.jsonl", run / "train", TrainConfig(
        method="dpo", learning_rate=a.lr, epochs=a.epochs, batch_size=a.batch, beta=a.beta, lora_r=0,
        max_length=a.max_length, sft_weight=a.sft_weight))
    result["train_seconds"] = round(time.perf_counter() - t0, 1)
    result["final"] = refusal_rates(str(run / "train" / "model"), held, run / "eval-final", a.eval_tokens)
    print("final", result["final"], flush=True)
    write_result(result, a.out)


if __name__ == "__main__":
    main()
