"""Evaluation: answer a set's prompts under a reasoning mode, judge the final responses, report rates with 95%
bootstrap intervals. Writes ``records.jsonl`` (resumable, one line per prompt) and ``metrics.json``.

:func:`evaluate` runs one set; :func:`evaluate_model` runs a list of sets against one model (``cada eval``, each
system of a study), with the judges of :func:`make_judges`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cada.config import EvalConfig, EvalSet
from cada.errors import CadaError
from cada.evaluate.metrics import breakdown, metrics
from cada.models.generate import Generator, SamplingParams
from cada.reasoning import Mode, SafetyReasoner
from cada.records import EvalItem, append_in_chunks, read_records, write_json
from cada.spec.schema import Spec


def evaluate(items: Sequence[EvalItem], generator: Generator, spec: Spec, output: str | Path, *,
             mode: str = "none", k: int = 6, max_new_tokens: int = EvalConfig().max_new_tokens, judge=None,
             rubric=None, seed: int = 0, chunk_size: int = 64, show_progress: bool = True) -> dict:
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

    def answer(chunk: list[EvalItem]) -> list[dict]:
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
        return rows

    done += append_in_chunks(rec_path, todo, chunk_size, answer)
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


def make_judges(cfg: EvalConfig, api_key: str | None = None):
    """The refusal judge, and the StrongREJECT rubric judge when ``cfg.judge`` is ``rubric`` (over its own server:
    the policy server's key is never sent there; ``api_key``, else $CADA_JUDGE_API_KEY, else $CADA_API_KEY)."""
    from cada.judges.refusal import RefusalJudge

    rubric = None
    if cfg.judge == "rubric":
        from cada.judges.rubric import RubricJudge
        from cada.models.generate import make_generator

        if not cfg.judge_base_url:
            raise CadaError("eval.judge_base_url: the rubric judge needs an OpenAI-compatible server (`cada eval "
                            "--judge rubric` needs --judge-base-url or $CADA_JUDGE_BASE_URL)")
        rubric = RubricJudge(make_generator(cfg.judge_model, base_url=cfg.judge_base_url, backend="http",
                                            api_key=api_key or os.environ.get("CADA_JUDGE_API_KEY")))
    return RefusalJudge.load(), rubric


def load_sets(sets: Sequence[EvalSet]) -> list[tuple[EvalSet, list[EvalItem]]]:
    """Each set with its items; a set with none is an error naming it."""
    from cada.data.benchmarks import eval_items

    loaded = [(s, eval_items(s)) for s in sets]
    for s, items in loaded:
        if not items:
            raise CadaError(f"{s.file or s.name}: no prompts to evaluate (eval set {s.name!r})")
    return loaded


def evaluate_model(generator: Generator, loaded: Sequence[tuple[EvalSet, list[EvalItem]]], spec: Spec,
                   folder_of, cfg: EvalConfig, *, mode: str = "none", judges=None, seed: int = 0,
                   show_progress: bool = True) -> dict[str, dict]:
    """Every set against one model, each into ``folder_of(set)``; the rubric judge scores harmful sets only."""
    judge, rubric = judges or make_judges(cfg)
    return {s.name: evaluate(items, generator, spec, folder_of(s), mode=mode, k=cfg.k,
                             max_new_tokens=cfg.max_new_tokens, judge=judge,
                             rubric=rubric if all(it.kind == "harmful" for it in items) else None, seed=seed,
                             show_progress=show_progress)
            for s, items in loaded}
