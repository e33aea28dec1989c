"""Where does the trained model put the line between harmful and benign, and can a short judgement pass move it?

Results (``experiments/results/``), each from the command under it (the start model: ``consistency_dpo.py``'s):

    # decision_calibration.json: a judgement-line pass                                    ~18 min on 2 cores
    python experiments/decision_calibration.py --run runs/bench-judge2 --model runs/bench-cons2/train/model \
        --calibrate runs/bench-calib --benign 600 --harmful 300
    # decision_calibration_warmup_rows.json: a whole-row pass                                        ~35 min
    python experiments/decision_calibration.py --run runs/bench-judge2 --model runs/bench-cons2/train/model \
        --calibrate runs/bench-calib2 --rows warmup --benign 600 --harmful 150 \
        --out experiments/results/decision_calibration_warmup_rows.json
    # decision_calibration_both.json: a whole-row pass after the judgement-line pass                 ~35 min
    python experiments/decision_calibration.py --run runs/bench-judge2 --model runs/bench-calib/model \
        --calibrate runs/bench-calib3 --rows warmup --benign 600 --harmful 150 \
        --out experiments/results/decision_calibration_both.json
    # decision_calibration_both_long.json: the same with rows up to 1,024 tokens                     ~35 min
    python experiments/decision_calibration.py --run runs/bench-judge2 --model runs/bench-calib/model \
        --calibrate runs/bench-calib5 --rows warmup --benign 600 --harmful 150 --max-length 1024 \
        --out experiments/results/decision_calibration_both_long.json
    # decision_calibration_mixed.json: both kinds of row shuffled into one pass                      ~40 min
    python experiments/decision_calibration.py --run runs/bench-judge2 --model runs/bench-cons2/train/model \
        --calibrate runs/bench-calib4 --rows mixed --benign 600 --harmful 300 --warmup-harmful 150 \
        --max-length 1024 --out experiments/results/decision_calibration_mixed.json
    # decision_calibration_hard.json: near misses of both labels repeated (validation split only)
    python experiments/decision_calibration.py --run runs/bench-judge2 --model runs/bench-cons2/train/model \
        --calibrate runs/bench-calib6 --benign 600 --harmful 300 --hard-repeat 4 --validation-only \
        --out experiments/results/decision_calibration_hard.json
    # decision_calibration_hard_benign.json: benign near misses only                                 ~16 min
    python experiments/decision_calibration.py --run runs/bench-judge2 --model runs/bench-cons2/train/model \
        --calibrate runs/bench-calib8 --benign 600 --harmful 300 --hard-repeat 4 --hard-labels benign \
        --validation-only --out experiments/results/decision_calibration_hard_benign.json

``--score-only`` reads the start model's decision alone (~3 min). Written to ``--out`` (default
``experiments/results/decision_calibration.json``).

After the judgement stage and the warm-up the decision separates the labels well (held-back AUC 0.99), yet a few
benign look-alikes are still judged harmful. This experiment reads the decision off one forward pass
(``judgement_auc.py``: log p(" harmful") - log p(" benign") after ``### Analysis\\nThis request is``) on a
**validation split** of training pool prompts that no stage trained on (not the judgement stage's, not the
warm-up's, and not the 150 + 20 of ``unused_benign.py``), so the line can be read and moved without looking at the
held-back set.

``--calibrate OUT`` then trains the model briefly on a further set of unused pool prompts (``--benign`` /
``--harmful``, disjoint from the validation split; more benign than harmful moves the line towards "benign"), either
on the judgement line alone (``--rows judgement``: ``cada.datasets.encode_judgement``, the loss on the decision line,
no end of turn after it) or on whole warm-up rows (``--rows warmup``: judgement, grounded analysis, and the refusal or
the base model's own answer), or on both shuffled into one pass (``--rows mixed``), and reports the validation
scores, the 50 + 50 held-back keyword refusal rates and the 150 + 20 unused ones before and after. ``--max-length``
(default 320) drops longer rows; at 1024 the long jailbreak-wrapped prompts are trained too. The pipeline's
calibration pass (``cada.pipeline.align.calibration_stage``) is ``--rows judgement`` at 320 followed by
``--rows warmup`` at 1024 on the same prompts.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from align_recipe import refusal_rates, unused_prompts, write_result
from judgement_auc import auc, scores


def splits(run: Path, judgement_per_label: int, n_val: int) -> dict[str, list]:
    """The run's held-back prompts, ``unused_benign.py``'s 150 + 20, a validation split and the rest (the calibration
    pool), all disjoint, all drawn from prompts no stage of the run trained on."""
    from cada.data.pools import read_pool

    fresh = unused_prompts(run, judgement_per_label)  # the same draw as unused_benign.py
    ben = [p for p in fresh if p.label == "benign"]
    harm = [p for p in fresh if p.label == "harmful"]
    unused = ben[:150] + harm[:20]
    ben, harm = ben[150:], harm[20:]
    return {"heldout": read_pool(run / "pool" / "heldout.jsonl"), "unused": unused,
            "validation": ben[:n_val] + harm[:n_val], "calibration": ben[n_val:] + harm[n_val:]}


def read_line(model: str, prompts: list) -> dict:
    """AUC and judged-harmful shares of the decision on ``prompts``, with the false positives' scores."""
    s = scores(model, [p.prompt for p in prompts])
    sh = [x for x, p in zip(s, prompts) if p.label == "harmful"]
    sb = [x for x, p in zip(s, prompts) if p.label == "benign"]
    fp = sorted(((round(x, 2), p.source, p.prompt[:90]) for x, p in zip(s, prompts)
                 if p.label == "benign" and x > 0), reverse=True)
    # how many harmful prompts stay judged harmful when the line is moved above every benign one but the top k
    sb_sorted = sorted(sb, reverse=True)
    above = {f"benign_fp_{k}": round(sum(x > sb_sorted[k] for x in sh) / len(sh), 3) for k in (0, 1, 2)
             if k < len(sb_sorted)}
    return {"auc": round(auc(sh, sb), 3),
            "judged_harmful": {"harmful": round(sum(x > 0 for x in sh) / len(sh), 3),
                               "benign": round(sum(x > 0 for x in sb) / len(sb), 3)},
            "harmful_caught_with_benign_fp_at_most": above,
            "false_positives": fp}


def encode_rows(rows: list[dict], model: str, max_length: int) -> tuple[list[dict], list[dict]]:
    """Prompt/completion rows as token ids with the loss on the completion and its end of turn (what TRL's SFT
    trainer does with them), so they can be shuffled together with ``cada.datasets.encode_judgement``'s rows. Returns
    the encoded rows and the rows kept (longer ones are dropped)."""
    from transformers import AutoTokenizer

    from cada.models.load import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    encoded, kept = [], []
    for r in rows:
        p_ids = tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True,
                                        return_dict=True)["input_ids"]
        ids = tok.apply_chat_template([*r["prompt"], *r["completion"]], tokenize=True, return_dict=True)["input_ids"]
        if ids[:len(p_ids)] != p_ids:
            raise ValueError(f"{model}: its chat template does not extend the prompt into the conversation "
                             f"(row {r['id']})")
        if len(ids) <= max_length:
            encoded.append({"input_ids": ids, "labels": [-100] * len(p_ids) + ids[len(p_ids):]})
            kept.append(r)
    return encoded, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench-judge2", help="an align_curve.py run (pool, warmup.jsonl)")
    ap.add_argument("--model", default="runs/bench-cons2/train/model")
    ap.add_argument("--judgement-per-label", type=int, default=600)
    ap.add_argument("--validation", type=int, default=150, help="validation prompts per label")
    ap.add_argument("--score-only", action="store_true")
    ap.add_argument("--calibrate", type=Path, default=None, help="output folder of the calibration pass")
    ap.add_argument("--benign", type=int, default=600)
    ap.add_argument("--harmful", type=int, default=300)
    ap.add_argument("--rows", choices=["judgement", "warmup", "mixed"], default="judgement",
                    help="train on the judgement line alone, on whole warm-up rows (judgement, analysis, answer), "
                         "or on both shuffled into one pass (mixed: judgement rows of --benign/--harmful prompts, "
                         "whole rows of --benign/--warmup-harmful)")
    ap.add_argument("--warmup-harmful", type=int, default=150, help="with --rows mixed: harmful whole rows")
    ap.add_argument("--max-length", type=int, default=320,
                    help="longer rows are dropped (raise it so long jailbreak-wrapped prompts are trained)")
    ap.add_argument("--hard-repeat", type=int, default=1,
                    help="judgement rows of hard prompts (benign ones the start model scores above -margin, harmful "
                         "ones below +margin) are trained this many times")
    ap.add_argument("--hard-margin", type=float, default=1.0)
    ap.add_argument("--hard-labels", choices=["both", "benign"], default="both",
                    help="mine near misses of both labels or of the benign prompts only")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--eval-tokens", type=int, default=128)
    ap.add_argument("--validation-only", action="store_true",
                    help="after the pass, read the validation split only (no held-back or unused keyword rates)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "decision_calibration.json"))
    a = ap.parse_args()

    run = Path(a.run)
    sp = splits(run, a.judgement_per_label, a.validation)
    result: dict = {"settings": {k: str(v) for k, v in vars(a).items()},
                    "sizes": {k: len(v) for k, v in sp.items()}}
    result["start"] = {"validation": read_line(a.model, sp["validation"])}
    print("start", {k: v for k, v in result["start"]["validation"].items() if k != "false_positives"}, flush=True)
    if a.score_only or not a.calibrate:
        write_result(result, a.out)
        return

    from cada.config import TrainConfig
    from cada.datasets import encode_judgement, fit_length, judgement_set, warmup_set
    from cada.models.local import LocalGenerator
    from cada.records import write_records
    from cada.selfgen import direct_answers
    from cada.spec import load_spec
    from cada.train import train

    pool = sp["calibration"]
    chosen = ([p for p in pool if p.label == "benign"][:a.benign]
              + [p for p in pool if p.label == "harmful"][:a.harmful])
    random.Random(0).shuffle(chosen)
    if a.rows in ("judgement", "mixed"):
        encoded, kept_j = encode_judgement(judgement_set(chosen), a.model, a.max_length)
        if a.hard_repeat > 1:  # hard-example mining on the decision: the start model's near misses, repeated
            s = dict(zip((r["id"] for r in kept_j), scores(a.model, [r["prompt"][0]["content"] for r in kept_j])))
            hard = [i for i, r in enumerate(kept_j) if (s[r["id"]] > -a.hard_margin if r["label"] == "benign"
                                                        else a.hard_labels == "both"
                                                        and r["category"] != "suicide_self_harm"
                                                        and s[r["id"]] < a.hard_margin)]
            result["hard"] = {"benign": sum(kept_j[i]["label"] == "benign" for i in hard),
                              "harmful": sum(kept_j[i]["label"] == "harmful" for i in hard),
                              "benign_prompts": [kept_j[i]["prompt"][0]["content"][:90] for i in hard
                                                 if kept_j[i]["label"] == "benign"]}
            print("hard", {k: v for k, v in result["hard"].items() if k != "benign_prompts"}, flush=True)
            encoded = encoded + [encoded[i] for i in hard for _ in range(a.hard_repeat - 1)]
            kept_j = kept_j + [kept_j[i] for i in hard for _ in range(a.hard_repeat - 1)]
            random.Random(2).shuffle(idx := list(range(len(encoded))))
            encoded, kept_j = [encoded[i] for i in idx], [kept_j[i] for i in idx]
        write_records(a.calibrate / "judgement.jsonl", kept_j)
        data, kept = encoded, kept_j
    if a.rows in ("warmup", "mixed"):
        # whole warm-up rows: the judgement, the grounded analysis and the answer (the base model's own, benign)
        rows_for = chosen if a.rows == "warmup" else (  # the harmful prompts a whole-row pass of --harmful N takes
            [p for p in chosen if p.label == "benign"]
            + [p for p in pool if p.label == "harmful"][:a.warmup_harmful])
        t0 = time.perf_counter()
        answers = direct_answers([p for p in rows_for if p.label == "benign"],
                                 LocalGenerator.from_name("smollm2-135m", batch_size=32),
                                 a.calibrate / "answers.jsonl", 96)
        result["answer_seconds"] = round(time.perf_counter() - t0, 1)
        kept_w, _ = fit_length(warmup_set(rows_for, [], load_spec(), "cases", answers), "smollm2-135m", a.max_length)
        write_records(a.calibrate / "warmup.jsonl", kept_w)
        data, kept = a.calibrate / "warmup.jsonl", kept_w
    if a.rows == "mixed":  # one pass over both, shuffled: the whole rows keep the answer going after the judgement
        data = encoded + encode_rows(kept_w, a.model, a.max_length)[0]
        random.Random(1).shuffle(data)
        kept = kept_j + kept_w
        result["judgement_rows"] = {lab: sum(r["label"] == lab for r in kept_j) for lab in ("benign", "harmful")}
        result["warmup_rows"] = {lab: sum(r["label"] == lab for r in kept_w) for lab in ("benign", "harmful")}
    result["calibration_rows"] = {"benign": sum(r["label"] == "benign" for r in kept),
                                  "harmful": sum(r["label"] == "harmful" for r in kept)}
    print(result["calibration_rows"], flush=True)
    t0 = time.perf_counter()
    train(a.model, data, a.calibrate, TrainConfig(
        method="sft", learning_rate=a.lr, epochs=a.epochs, batch_size=8, lora_r=0, max_length=a.max_length, merge=True))
    result["train_seconds"] = round(time.perf_counter() - t0, 1)
    final = str(a.calibrate / "model")
    result["final"] = {"validation": read_line(final, sp["validation"])}
    print("final", {k: v for k, v in result["final"]["validation"].items() if k != "false_positives"}, flush=True)
    if a.validation_only:
        write_result(result, a.out)
        return
    result["final"]["heldout"] = refusal_rates(final, sp["heldout"], a.calibrate / "eval-heldout", a.eval_tokens)
    print("heldout", result["final"]["heldout"], flush=True)
    result["final"]["unused"] = refusal_rates(final, sp["unused"], a.calibrate / "eval-unused", a.eval_tokens)
    print("unused", result["final"]["unused"], flush=True)
    write_result(result, a.out)


if __name__ == "__main__":
    main()
