"""File in, file out: what ``cada judge`` and ``cada judge calibrate`` call.

Every output line is the input row plus the judge's fields. Judges read the final response only: text after a
``### Final Response`` header when there is one (:func:`cada.reasoning.parse_output`), else the whole cell.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cada.errors import CadaError
from cada.records import column, read_rows, write_records
from cada.judges.refusal import LABELS, RefusalJudge
from cada.judges.rubric import RubricJudge
from cada.judges.training import label_report, normalize_label
from cada.models.generate import Generator, SamplingParams
from cada.reasoning import parse_output

JUDGES = ("refusal", "rubric")


def _texts(rows: list[dict], col: str | None, path: Path) -> list[str] | None:
    if col is None:
        return None
    values = column(rows, col, path)
    for i, v in enumerate(values, 1):
        if v is not None and not isinstance(v, (str, int, float)):
            raise CadaError(f"{path}: row {i}: column {col!r} is a {type(v).__name__}, not text; a response "
                            "must be a string (give the message's content)")
    return ["" if v is None else str(v) for v in values]


def _responses(rows: list[dict], col: str, path: Path, final_only: bool) -> list[str]:
    cells = _texts(rows, col, path) or []
    return [parse_output(c).response for c in cells] if final_only else cells


def _merge(row: dict, judged: dict, renamed: set[str]) -> dict:
    """The input row plus the judge's fields; an input column with a judge field's name is kept as ``input_<name>``."""
    out = dict(row)
    for key in judged.keys() & row.keys():
        out[f"input_{key}"] = out.pop(key)
        renamed.add(key)
    out.update(judged)
    return out


def judge_file(input: str | Path, output: str | Path, *, judge: str = "refusal", response_column: str = "response",
               prompt_column: str | None = None, head: str | Path | None = None,
               generator: Generator | None = None, params: SamplingParams | None = None,
               final_only: bool = True) -> dict:
    """Judge every row of a CSV/JSON/JSONL file and write JSONL; returns a summary for the CLI to print.

    ``refusal`` (offline) adds ``label``, ``probs`` and ``rule``. ``rubric`` needs ``prompt_column`` (the forbidden
    prompt) and a ``generator`` (e.g. :class:`~cada.models.http.OpenAIGenerator`); it adds ``label``
    (refuse/comply, None on failure), ``refused``, ``convincing``, ``specific``, ``score``, ``error`` and
    ``judge_output``. Summary: ``{"n", "output", "labels": {label: count}, "errors", "failed" (rows without a
    label), "renamed", "mean_score"}``, and ``first_error`` when a row failed.
    """
    if judge not in JUDGES:
        raise CadaError(f"--judge {judge!r}: use {' or '.join(JUDGES)}")
    path = Path(input)
    rows = read_rows(path)
    if not rows:
        raise CadaError(f"{path}: no rows to judge")
    responses = _responses(rows, response_column, path, final_only)
    prompts = _texts(rows, prompt_column, path)
    if judge == "refusal":
        judged = [r.to_dict() for r in RefusalJudge.load(head).classify(responses, prompts)]
    else:
        if prompts is None:
            raise CadaError("the rubric judge grades a response against its prompt: give --prompt-column")
        if generator is None:
            raise CadaError("the rubric judge needs a judge model: give --base-url and --model of an "
                            "OpenAI-compatible server")
        results = RubricJudge(generator, *([params] if params else [])).judge(prompts, responses)
        judged = [{**{k: v for k, v in r.to_dict().items() if k != "raw"}, "judge_output": r.raw} for r in results]
    renamed: set[str] = set()
    write_records(output, (_merge(row, j, renamed) for row, j in zip(rows, judged)))
    scores = [j["score"] for j in judged if j.get("score") is not None]
    failed = [j for j in judged if j.get("label") is None or j.get("error")]
    summary = {"n": len(rows), "output": str(output), "labels": dict(Counter(str(j["label"]) for j in judged)),
               "errors": sum(1 for j in judged if j.get("error")), "failed": len(failed), "renamed": sorted(renamed),
               "mean_score": sum(scores) / len(scores) if scores else None}
    if failed:
        summary["first_error"] = failed[0].get("error") or "no label"
    return summary


def calibrate(input: str | Path, label_column: str, *, response_column: str = "response",
              prompt_column: str | None = None, head: str | Path | None = None, final_only: bool = True) -> dict:
    """Run the refusal judge on a file with human labels and compare: see :func:`~cada.judges.training.label_report`.

    Human labels may be comply/refuse/partial or XSTest's ``1_full_compliance`` / ``2_full_refusal`` /
    ``3_partial_refusal`` (case-insensitive). The report adds ``input`` and ``head``.
    """
    path = Path(input)
    rows = read_rows(path)
    gold = []
    for i, value in enumerate(column(rows, label_column, path)):
        lab = normalize_label(value)
        if lab is None:
            raise CadaError(f"{path}: row {i + 1}: {label_column}={value!r} is not a label; use "
                            f"{', '.join(LABELS)} (or 1_full_compliance, 2_full_refusal, 3_partial_refusal)")
        gold.append(lab)
    responses = _responses(rows, response_column, path, final_only)
    prompts = _texts(rows, prompt_column, path)
    predicted = [r.label for r in RefusalJudge.load(head).classify(responses, prompts)]
    return {"input": str(path), "head": str(head or "shipped"), **label_report(gold, predicted)}


def report_text(report: dict) -> str:
    """A plain-text rendering of a :func:`calibrate` report (accuracies, per-class P/R, confusion matrix)."""
    pct = lambda v: "  -  " if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"n={report['n']}  accuracy={pct(report['accuracy'])}  "
             f"binary accuracy (refuse+partial vs comply)={pct(report['binary_accuracy'])}", "",
             f"{'class':8s} {'precision':>9s} {'recall':>7s} {'support':>7s}"]
    for lab, m in report["per_class"].items():
        lines.append(f"{lab:8s} {pct(m['precision']):>9s} {pct(m['recall']):>7s} {m['support']:7d}")
    lines += ["", "confusion (rows: human, columns: judge)", f"{'':8s} " + " ".join(f"{c:>7s}" for c in LABELS)]
    for g, row in report["confusion"].items():
        lines.append(f"{g:8s} " + " ".join(f"{row[c]:7d}" for c in LABELS))
    return "\n".join(lines)
