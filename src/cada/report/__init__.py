"""Study report: one self-contained HTML page (plots inline as base64 PNG, inline CSS, no scripts), a markdown twin
(its plots under ``report_files/``) and a JSON twin (the tables' data), all read from a study folder::

    study_dir/summary.json                               the study's numbers (written by cada.pipeline.study)
    study_dir/eval/<system>/<benchmark>/records.jsonl    one judged response a line (for the example transcripts)

``build_report`` (:mod:`cada.report.build`) turns (summary, records) into one plain dict, the JSON twin;
``render_html`` (:mod:`cada.report.html`) / ``render_markdown`` (:mod:`cada.report.markdown`) only lay that dict out,
with the figures of :mod:`cada.report.plots`. Every piece of model or prompt text goes through ``html.escape``
(HTML) or a code fence longer than any backtick run in it (markdown): model outputs are untrusted. The headline and
the verdict are :mod:`cada.evaluate.metrics`'s, the definitions the study's summary uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from cada.report.build import (HEADLINE, KIND_RATES, attack_tables, benchmark_table, build_report, category_rates,
                               fmt, fmt_ci, fmt_seconds, headline_table, headline_values, pareto_points, pick_examples,
                               read_study_records, read_summary, run_details, summary_text, verdict)
from cada.report.html import CSS, WANTED, render_html
from cada.report.markdown import render_markdown
from cada.report.plots import plot_categories, plot_pareto

__all__ = ["CSS", "HEADLINE", "KIND_RATES", "WANTED", "attack_tables", "benchmark_table", "build_report",
           "category_rates", "fmt", "fmt_ci", "fmt_seconds", "headline_table", "headline_values", "pareto_points",
           "pick_examples", "plot_categories", "plot_pareto", "read_study_records", "read_summary", "render_html",
           "render_markdown", "run_details", "summary_text", "verdict", "write_report"]


def write_report(study_dir: str | Path) -> dict[str, Path]:
    """Write ``report.html`` (self-contained), ``report.md`` (+ ``report_files/*.png``) and ``report.json`` into the
    study folder; returns their paths. Raises CadaError when summary.json is missing or not valid JSON."""
    root = Path(study_dir)
    summary = read_summary(root)
    report = build_report(summary, read_study_records(root, summary))
    figures = {name: png for name, png in (("pareto", plot_pareto(report)), ("categories", plot_categories(report)))
               if png}
    files_dir = root / "report_files"
    files_dir.mkdir(exist_ok=True)
    for stale in ("pareto", "categories"):
        (files_dir / f"{stale}.png").unlink(missing_ok=True)
    links = {}
    for name, png in figures.items():
        (files_dir / f"{name}.png").write_bytes(png)
        links[name] = f"report_files/{name}.png"
    paths = {"html": root / "report.html", "md": root / "report.md", "json": root / "report.json"}
    paths["html"].write_text(render_html(report, figures), encoding="utf-8")
    paths["md"].write_text(render_markdown(report, links), encoding="utf-8")
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                             encoding="utf-8")
    return paths
