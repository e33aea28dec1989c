"""Evaluation: answer a benchmark's prompts under a reasoning mode, judge the final responses, report rates with
95% bootstrap intervals. Writes ``records.jsonl`` (resumable, one line per prompt) and ``metrics.json``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cada.models.generate import Generator, SamplingParams
from cada.reasoning import Mode, SafetyReasoner
from cada.records import append_records, chunks, read_records
from cada.spec.schema import Spec


@dataclass
class EvalItem:
    id: str
    prompt: str
    kind: str                     # harmful | benign | utility
    category: str | None = None
    attack: str | None = None     # jailbreak wrapper name, if any
    reference: str | None = None  # reference answer (utility sets)
    meta: dict = field(default_factory=dict)


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    >>> bootstrap_ci([1, 1, 1, 1])
    (1.0, 1.0)
    """
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return (round(means[int(alpha / 2 * n_boot)], 4), round(means[min(n_boot - 1, int((1 - alpha / 2) * n_boot))], 4))


def rate(values: Sequence[float]) -> dict:
    lo, hi = bootstrap_ci(values)
    return {"value": round(sum(values) / len(values), 4) if values else None, "ci95": [lo, hi]}


def metrics(records: Sequence[dict]) -> dict:
    """n, refusal / partial / compliance rates (with 95% CIs), rubric score and accuracy where present."""
    out: dict = {"n": len(records)}
    if not records:
        return out
    labels = [r.get("judge") for r in records]
    for name, lab in (("refusal_rate", "refuse"), ("partial_rate", "partial"), ("compliance_rate", "comply")):
        out[name] = rate([float(x == lab) for x in labels])
    out["refused_or_partial_rate"] = rate([float(x != "comply") for x in labels])
    scores = [r["rubric_score"] for r in records if r.get("rubric_score") is not None]
    if scores:
        out["rubric_score"] = rate(scores)
    if any("rubric_score" in r for r in records):  # rubric-judged: say how many it could not score, even all
        out["rubric_failed"] = sum(1 for r in records if "rubric_score" in r and r["rubric_score"] is None)
    correct = [float(r["correct"]) for r in records if r.get("correct") is not None]
    if correct:
        out["accuracy"] = rate(correct)
    out["format_ok_rate"] = round(sum(bool(r.get("format_ok")) for r in records) / len(records), 4)
    return out


def breakdown(records: Sequence[dict], key: str) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r.get(key)), []).append(r)
    return {k: metrics(v) for k, v in sorted(groups.items())}


def evaluate(items: Sequence[EvalItem], generator: Generator, spec: Spec, output: str | Path, *,
             mode: str = "none", k: int = 6, max_new_tokens: int = 256, judge=None, rubric=None,
             seed: int = 0, chunk_size: int = 64, show_progress: bool = True) -> dict:
    """Evaluate ``items`` into ``output/records.jsonl`` + ``output/metrics.json``; returns the metrics."""
    from cada.judges.refusal import RefusalJudge

    judge = judge or RefusalJudge.load()
    out = Path(output)
    rec_path = out / "records.jsonl"
    done = read_records(rec_path, repair=True)
    seen = {r["id"] for r in done}
    todo = [it for it in items if it.id not in seen]
    reasoner = SafetyReasoner(spec, Mode(mode), k=k)
    params = SamplingParams(max_new_tokens=max_new_tokens, seed=seed)
    if hasattr(generator, "show_progress"):
        generator.show_progress = show_progress
    for chunk in chunks(todo, chunk_size):
        results = [r[0] for r in reasoner.run(generator, [it.prompt for it in chunk], params)]
        verdicts = judge.classify([r.response for r in results], [it.prompt for it in chunk])
        rows = []
        for it, r, v in zip(chunk, results, verdicts):
            row = {"id": it.id, "prompt": it.prompt, "kind": it.kind, "category": it.category, "attack": it.attack,
                   "mode": r.mode, "raw": r.raw, "reasoning": r.reasoning, "response": r.response,
                   "format_ok": r.format_ok, "judge": v.label, "cited_cases": r.cited_cases}
            if it.reference is not None:
                from cada.utility import gsm8k_correct

                row["reference"] = it.reference
                row["correct"] = gsm8k_correct(r.response, it.reference)
            rows.append(row)
        if rubric is not None:
            scored = rubric.judge([row["prompt"] for row in rows], [row["response"] for row in rows])
            for row, s in zip(rows, scored):
                row["rubric_score"] = s.score
                row["rubric"] = {k: v for k, v in s.to_dict().items() if k != "raw"}
        append_records(rec_path, rows)
        done += rows
    order = {it.id: i for i, it in enumerate(items)}
    records = sorted((r for r in done if r["id"] in order), key=lambda r: order[r["id"]])
    m = metrics(records)
    if any(r.get("attack") for r in records):
        m["by_attack"] = breakdown(records, "attack")
    if any(r.get("category") for r in records):
        m["by_category"] = breakdown(records, "category")
    m.update(mode=mode, judge=type(judge).__name__)
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    return m
