"""Does the embedded model *know* harmful from benign, and can fine-tuning make it *say* so? Two measurements on
held-back prompts of the training pools (``RUN/pool``, e.g. from ``align_curve.py``).

Results (``experiments/results/``), each from the commands under it:

    # judgement_stage.json: the probe and the stage (``note`` there: an earlier form of this script; 600 prompts
    # per label, lr 5e-5, 3 epochs), then the warm-up from it (``align_curve.py --init``, keys then_*)
    python experiments/judgement_stage.py --run runs/bench-pref --probe                    # linear probe, ~5 min
    python experiments/judgement_stage.py --run runs/bench-pref --train runs/judgement     # the stage, ~30 min
    # judgement_bf16.json: float32 vs bf16 autocast, 300 prompts per label, two epochs (its settings are the
    # second run's; the first run's --train folder is not recorded)
    python experiments/judgement_stage.py --run runs/bench-bf16 --per-label 300 --epochs 2 \
        --train runs/bench-bf16/judgement-off --bf16 off --key bf16_off --out experiments/results/judgement_bf16.json
    python experiments/judgement_stage.py --run runs/bench-bf16 --per-label 300 --epochs 2 \
        --train runs/bench-bf16/judgement-on --bf16 on --key bf16_on --out experiments/results/judgement_bf16.json

Written to ``--out`` (default ``experiments/results/judgement_stage.json``) under ``--key``; the other keys of an
existing file are kept.

``--probe``: a logistic regression on the base model's hidden state at the last prompt token (every third layer),
fitted on ``--per-label`` training-pool prompts per label and scored on the held-back ones. Its ROC AUC says how
well the frozen representations already separate the labels.

``--train OUT``: the judgement stage of ``cada align`` (SFT on the decision line alone, ``cada.datasets.judgement_set``)
on the same training prompts, full fine-tuning, a checkpoint every half epoch; each checkpoint's decision is read
off one forward pass (``judgement_auc.py``'s score: log p(" harmful") - log p(" benign") after the analysis opener).
``align_curve.py --init OUT/model`` then runs the warm-up from it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from judgement_auc import auc, scores


def _prompts(run: Path, per_label: int) -> tuple[list, list]:
    from cada.data.pools import balanced, read_pool

    train, held = read_pool(run / "pool" / "train.jsonl"), read_pool(run / "pool" / "heldout.jsonl")
    return balanced(train, per_label, 0), held


def probe(model_dir: str, train: list, held: list) -> dict:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from cada.models.load import load_model

    model, tok = load_model(model_dir)

    def feats(prompts: list) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for p in prompts:
                text = tok.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False,
                                               add_generation_prompt=True)
                ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -384:]
                hs = model(input_ids=ids, output_hidden_states=True).hidden_states
                out.append(torch.stack([h[0, -1] for h in hs]).float().numpy())
        return np.stack(out)

    xtr, xte = feats(train), feats(held)
    ytr = np.array([p.label == "harmful" for p in train])
    yte = np.array([p.label == "harmful" for p in held])
    layers = {}
    for layer in range(3, xtr.shape[1], 3):
        sc = StandardScaler().fit(xtr[:, layer])
        clf = LogisticRegression(C=0.05, max_iter=2000).fit(sc.transform(xtr[:, layer]), ytr)
        s = clf.decision_function(sc.transform(xte[:, layer]))
        top_benign = s[~yte].max()
        layers[layer] = {"auc": round(float(roc_auc_score(yte, s)), 3),
                         "harmful_caught_with_no_benign": round(float((s[yte] > top_benign).mean()), 2)}
        print(layer, layers[layer], flush=True)
    return layers


def train_stage(out: Path, train: list, held: list, lr: float, epochs: float, bf16: bool | None = None) -> dict:
    from cada.config import TrainConfig
    from cada.datasets import fit_length, judgement_set
    from cada.train import train as run_train

    rows, dropped = fit_length(judgement_set(train), "smollm2-135m", 320)
    steps = len(rows) // 8
    t0 = time.perf_counter()
    run_train("smollm2-135m", rows, out, TrainConfig(
        method="sft", learning_rate=lr, epochs=epochs, batch_size=8, lora_r=0, max_length=320, bf16=bf16,
        extra={"save_strategy": "steps", "save_steps": max(1, steps // 2), "save_total_limit": None,
               "save_only_model": True}))
    seconds = round(time.perf_counter() - t0, 1)
    print(f"{len(rows)} rows ({dropped} too long), trained in {seconds:.0f} s", flush=True)
    harm = [p.prompt for p in held if p.label == "harmful"]
    ben = [p.prompt for p in held if p.label == "benign"]
    points = []
    for ck in sorted((out / "trainer").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        s = scores(str(ck), harm + ben)
        sh, sb = s[:len(harm)], s[len(harm):]
        point = {"checkpoint": ck.name, "examples_seen": int(ck.name.split("-")[1]) * 8,
                 "auc": round(auc(sh, sb), 3),
                 "judged_harmful": {"harmful": round(sum(x > 0 for x in sh) / len(sh), 2),
                                    "benign": round(sum(x > 0 for x in sb) / len(sb), 2)}}
        points.append(point)
        print(point, flush=True)
    info = json.loads((out / "train_info.json").read_text())
    return {"rows": len(rows), "train_seconds": seconds, "bf16_autocast": info.get("bf16_autocast"),
            "checkpoints": points}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench-pref")
    ap.add_argument("--per-label", type=int, default=600)
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--train", type=Path, default=None, help="output folder of the judgement stage")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="bf16 autocast: auto (where the CPU or GPU has bf16), on or off")
    ap.add_argument("--key", default="judgement_stage", help="the result's key in --out (to keep several runs)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "judgement_stage.json"))
    a = ap.parse_args()

    train, held = _prompts(Path(a.run), a.per_label)
    out = Path(a.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result["settings"] = {k: str(v) for k, v in vars(a).items()}
    if a.probe:
        result["probe_base_model"] = probe("smollm2-135m", train, held)
    if a.train:
        result[a.key] = train_stage(a.train, train, held, a.lr, a.epochs,
                                    {"auto": None, "on": True, "off": False}[a.bf16])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
