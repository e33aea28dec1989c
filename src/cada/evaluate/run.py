"""Evaluation: answer a benchmark's prompts under a reasoning mode, judge the final responses, report rates with
95% bootstrap intervals. Writes ``records.jsonl`` (resumable, one line per prompt) and ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cada.models.generate import Generator, SamplingParams
from cada.reasoning import Mode, SafetyReasoner
from cada.evaluate.metrics import breakdown, metrics
from cada.records import append_records, chunks, read_records, write_json
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
                from cada.evaluate.utility import gsm8k_correct

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
    write_json(out / "metrics.json", m)
    return m
