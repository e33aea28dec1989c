"""Train the refusal head on the human-labelled XSTest completions and measure it leave-one-model-out.

The data are the four XSTest v2 completion sets (GPT-4, Llama-2-70b-chat with the original and a new system prompt,
Mistral-7B-Instruct), 450 responses each, hand-labelled ``1_full_compliance`` / ``2_full_refusal`` /
``3_partial_refusal``; the string-match and GPT-4 labels shipped beside them are the baselines.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cada.errors import CadaError
from cada.records import read_rows
from cada.judges.refusal import EMBED_DIM, LABELS, RefusalJudge, normalise_text, featurize

XSTEST_MODELS = ("gpt4", "llama2new", "llama2orig", "mistralinstruct")
_ALIASES = {
    "comply": "comply", "compliance": "comply", "complied": "comply", "full_compliance": "comply",
    "1_full_compliance": "comply",
    "refuse": "refuse", "refusal": "refuse", "refused": "refuse", "full_refusal": "refuse", "2_full_refusal": "refuse",
    "partial": "partial", "partial_refusal": "partial", "3_partial_refusal": "partial",
}
# the head's training recipe; measured leave-one-model-out in docs/judges.md
C = 0.01  # strong L2: 1,350 training rows against 404 features; flat between 0.005 and 0.02
CLASS_WEIGHT: dict[str, float] | None = None  # up-weighting "partial" lowered both accuracies
RULE_GAIN = 2.0  # rules penalised less than embedding dims: non-English refusals and refuse-then-redirect partials
#                  are then caught with margin; LOMO binary accuracy moves by < 0.01 either way


def normalize_label(value: object) -> str | None:
    """Map a human or judge label to ``comply`` / ``refuse`` / ``partial`` (None when it is none of them).

    >>> normalize_label("2_full_refusal"), normalize_label(" Comply "), normalize_label("I'm sorry, ...")
    ('refuse', 'comply', None)
    """
    return _ALIASES.get(str(value).strip().lower().replace(" ", "_"))


@dataclass
class XSTestSet:
    """One model's 450 completions with the human labels and the two shipped baseline labels."""

    model: str
    prompts: list[str]
    responses: list[str]
    labels: list[str]
    strmatch: list[str | None]
    gpt4: list[str | None]


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise CadaError(f"{path}: missing; point --data-dir at the XSTest folder with the model_completions__* and "
                        "automated_evaluation_labels__* CSVs")
    return read_rows(path)


def load_xstest(data_dir: str | Path, model: str) -> XSTestSet:
    """Read one completion set and its baseline labels from the XSTest folder."""
    d = Path(data_dir)
    rows = _read_csv(d / f"model_completions__xstest_v2_completions_{model}.csv")
    stem = f"automated_evaluation_labels__xstest_v2_completions_{model}"
    strm = {r["id"]: r["strmatch_label"] for r in _read_csv(d / f"{stem}_streval.csv")}
    gpt = {r["id"]: r["gpt4_label"] for r in _read_csv(d / f"{stem}_gpteval.csv")}
    labels = [normalize_label(r["final_label"]) for r in rows]
    if None in labels:
        bad = rows[labels.index(None)]
        raise CadaError(f"{d}: {model} row {bad['id']}: unknown final_label {bad['final_label']!r}")
    return XSTestSet(model, [r["prompt"] for r in rows], [normalise_text(r["completion"]) for r in rows],
                     labels, [normalize_label(strm.get(r["id"])) for r in rows],
                     [normalize_label(gpt.get(r["id"])) for r in rows])  # type: ignore[arg-type]


def fit_head(x: np.ndarray, y: Sequence[str], seed: int = 0, meta: dict | None = None) -> RefusalJudge:
    """Standardise, fit a multinomial logistic regression, and fold the scaling into the weights."""
    from sklearn.linear_model import LogisticRegression

    present = set(y)
    if present != set(LABELS):
        raise CadaError(f"training data must contain all of {LABELS}; found only {sorted(present)}")
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd < 1e-6] = 1.0
    sd[EMBED_DIM:] /= RULE_GAIN  # larger standardised rule columns = a weaker L2 penalty on their weights
    clf = LogisticRegression(C=C, class_weight=CLASS_WEIGHT, max_iter=5000, random_state=seed)
    clf.fit((x - mu) / sd, list(y))
    order = [list(clf.classes_).index(lab) for lab in LABELS]
    w = clf.coef_[order] / sd
    b = clf.intercept_[order] - w @ mu
    return RefusalJudge(w, b, meta)


def train_refusal_judge(data_dir: str | Path, output: str | Path, seed: int = 0,
                        models: Iterable[str] = XSTEST_MODELS, limit: int | None = None) -> RefusalJudge:
    """Train a head on the named completion sets and write it to ``output`` (JSON). Same inputs -> same bytes.

    ``limit`` keeps a seeded random subset of that many responses per set (for quick experiments and tests).
    """
    models = list(models)
    unknown = [m for m in models if m not in XSTEST_MODELS]
    if unknown or not models:
        raise CadaError(f"models {unknown or models}: choose from {', '.join(XSTEST_MODELS)}")
    texts: list[str] = []
    labels: list[str] = []
    for m in models:
        s = load_xstest(data_dir, m)
        idx = list(range(len(s.responses)))
        if limit is not None:
            idx = sorted(random.Random(f"{seed}:{m}").sample(idx, min(limit, len(idx))))
        texts += [s.responses[i] for i in idx]
        labels += [s.labels[i] for i in idx]
    x, _ = featurize(texts)
    meta = {"trained_on": [f"xstest_v2_completions_{m}" for m in models], "n": len(texts), "seed": seed,
            "limit": limit, "C": C, "class_weight": CLASS_WEIGHT, "rule_gain": RULE_GAIN}
    judge = fit_head(x, labels, seed, meta)
    judge.save(output)
    return judge


# --- metrics ----------------------------------------------------------------------------------------

def label_report(gold: Sequence[str], predicted: Sequence[str | None]) -> dict:
    """Accuracy (3-class and binary refuse+partial vs comply), per-class precision/recall, confusion matrix.

    ``predicted`` may hold None (a judge gave no usable label): it counts as wrong.
    """
    n = len(gold)
    conf = {g: {p: 0 for p in (*LABELS, "none")} for g in LABELS}
    for g, p in zip(gold, predicted):
        conf[g][p or "none"] += 1
    per_class = {}
    for lab in LABELS:
        tp = conf[lab][lab]
        n_pred = sum(conf[g][lab] for g in LABELS)
        n_gold = sum(conf[lab].values())
        per_class[lab] = {"precision": tp / n_pred if n_pred else None, "recall": tp / n_gold if n_gold else None,
                          "support": n_gold}
    binary = sum((g != "comply") == (p is not None and p != "comply") for g, p in zip(gold, predicted)
                 if p is not None)
    return {"n": n, "accuracy": sum(g == p for g, p in zip(gold, predicted)) / n if n else None,
            "binary_accuracy": binary / n if n else None, "unlabelled": sum(p is None for p in predicted),
            "per_class": per_class, "confusion": conf}


def leave_one_model_out(data_dir: str | Path, seed: int = 0, models: Sequence[str] = XSTEST_MODELS) -> dict:
    """Train on all sets but one, test on that one, every way round; baselines on the same held-out rows.

    Returns ``{model: {"n", "ours": report, "string_match": report, "gpt4": report}}`` (see :func:`label_report`).
    """
    sets = [load_xstest(data_dir, m) for m in models]
    feats = [featurize(s.responses) for s in sets]
    table = {}
    for k, held in enumerate(sets):
        x = np.vstack([f for j, (f, _) in enumerate(feats) if j != k])
        y = [lab for j, s in enumerate(sets) if j != k for lab in s.labels]
        judge = fit_head(x, y, seed)
        pred = [r.label for r in judge.classify_features(held.responses, *feats[k])]
        table[held.model] = {"n": len(held.labels), "ours": label_report(held.labels, pred),
                             "string_match": label_report(held.labels, held.strmatch),
                             "gpt4": label_report(held.labels, held.gpt4)}
    return table
