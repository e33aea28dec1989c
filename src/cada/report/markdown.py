"""The markdown twin of the report: the same sections as the HTML page, its plots as files next to it
(``report_files/``). Model and prompt text sits in a code fence longer than any backtick run in it, so untrusted
output cannot close the block; table cells are HTML-escaped."""

from __future__ import annotations

import html
import re

from cada.report.build import PAPER_NOTE, fmt, fmt_seconds
from cada.report.html import PROMPT_CHARS, RESPONSE_CHARS, badge, cat_cell, ci_cell, clip, config_text, scalar


def _md_cell(s) -> str:
    return html.escape(str(s), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(rows_i) + " |" for rows_i in ([_md_cell(c) for c in r] for r in rows)]
    return "\n".join(lines)


def _fence(text: str, info: str = "text") -> str:
    """A fenced block that the text cannot close: longer than any backtick run inside.

    >>> print(_fence("a ``` b"))
    ````text
    a ``` b
    ````
    """
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    f = "`" * max(3, longest + 1)
    return f"{f}{info}\n{text}\n{f}"


def _top_md(report: dict) -> list[str]:
    """Title, the run's date / seed / wall time, the summary and the verdict."""
    d, v = report["details"], report["verdict"]
    md = [f"# {_md_cell(report['title'])}", ""]
    meta = [f"created {report['created']}" if report.get("created") else None,
            f"seed {d['seed']}" if d.get("seed") is not None else None,
            f"wall time {fmt_seconds(d['wall_seconds'])}" if d.get("wall_seconds") is not None else None]
    if any(meta):
        md += [f"*{_md_cell(' · '.join(m for m in meta if m))}*", ""]
    return md + [_md_cell(report["summary"]), "", f"**{_md_cell(v['conclusion'])}** " + _md_cell(
        " ".join(v["comparisons"] + [v["note"]])), ""]


def _headline_md(h: dict) -> list[str]:
    md = ["## Headline", ""]
    if not h["columns"]:
        return md + ["Headline numbers not recorded.", ""]
    md.append(_md_table(["System"] + [c["label"] for c in h["columns"]],
                        [[r["label"]] + [(f"**{s}**" if c["key"] in r["best"] else s)
                                         for c in h["columns"]
                                         for s in [fmt(r["values"][c["key"]],
                                                       3 if c["key"] == "reference_loglik" else 2)]]
                         for r in h["rows"]]))
    return md + ["", f"Best value per column in bold. Refusal rates here count refusals and partial refusals (for "
                 f"harmful sets the per-benchmark table gives both). Source: {h['source']}.", ""]


def _benchmarks_md(report: dict) -> list[str]:
    pb = report["per_benchmark"]
    md = ["## Per-benchmark results", "", "Rate with its 95% bootstrap interval.", ""]
    md.append(_md_table(["System"] + [f"{c['benchmark']}: {c['label']}" + (f" (n = {c['n']})" if c.get("n") else "")
                                      for c in pb["columns"]],
                        [[r["label"]] + [ci_cell(cell, c.get("n")) for c, cell in zip(pb["columns"], r["cells"])]
                         for r in pb["rows"]]))
    md.append("")
    for t in report["per_attack"]:
        md += [f"### Refusal rate by jailbreak attack: {_md_cell(t['benchmark'])}", ""]
        md.append(_md_table(["System"] + t["attacks"],
                            [[r["label"]] + [ci_cell(r["cells"][a], None) for a in t["attacks"]]
                             for r in t["rows"]]))
        md.append("")
    return md


def _paper_md(report: dict) -> list[str]:
    pt = report.get("paper") or {}
    if not pt.get("columns"):
        return []
    md = ["## The paper's tables", "", PAPER_NOTE, ""]
    md.append(_md_table(["System"] + [f"{c['benchmark']}: {c['label']}" + (f" (n = {c['n']})" if c.get("n") else "")
                                      for c in pt["columns"]],
                        [[r["label"]] + [ci_cell(cell, c.get("n")) for c, cell in zip(pt["columns"], r["cells"])]
                         for r in pt["rows"]]))
    return md + [""]


def _figures_md(report: dict, figure_files: dict[str, str]) -> list[str]:
    md = ["## Safety vs over-refusal", ""]
    if figure_files.get("pareto"):
        md += [f"![Pareto plot: harmful compliance against benign over-refusal]({figure_files['pareto']})", "",
               "x = benign over-refusal, y = harmful compliance (1 − harmful refusal); lower-left is better.", ""]
    else:
        md += ["Not recorded.", ""]
    md += ["## Harmful refusal by category", ""]
    cat = report["categories"]
    if cat["rows"] and cat["categories"]:
        if figure_files.get("categories"):
            md += [f"![Refusal rate by harm category]({figure_files['categories']})", ""]
        md.append(_md_table(["System"] + cat["categories"],
                            [[r["label"]] + [cat_cell(r["rates"].get(c)) for c in cat["categories"]]
                             for r in cat["rows"]]))
        md.append("")
    else:
        md += ["Not recorded.", ""]
    return md


def _examples_md(examples: list[dict]) -> list[str]:
    md = ["## Example transcripts", "",
          "> **Content warning:** this section contains descriptions of harmful requests; responses are model "
          "outputs, shown unedited (truncated) and not endorsed.", ""]
    for i, ex in enumerate(examples, 1):
        tags = " · ".join(_md_cell(t) for t in [ex["group"], ex.get("category"), ex.get("attack")] if t)
        prompt, cut = clip(ex["prompt"], PROMPT_CHARS)
        md += [f"### {i}. {tags} ({_md_cell(ex['benchmark'])} · {_md_cell(ex['id'])})", "", "**Prompt**", "",
               _fence(prompt + (f" … [{cut} more characters]" if cut else "")), ""]
        for r in ex["responses"]:
            if r["missing"]:
                md += [f"**{_md_cell(r['label'])}**: no record for this prompt", ""]
                continue
            _, text = badge(r["judge"], ex.get("kind"), r.get("correct"))
            body, cut = clip(r["response"], RESPONSE_CHARS)
            md += [f"**{_md_cell(r['label'])}**: `{_md_cell(text)}`", "",
                   _fence((body if body.strip() else "(empty response)") + (f" … [{cut} more characters]"
                                                                           if cut else "")), ""]
    return md


def _details_md(d: dict) -> list[str]:
    md = ["## Run details", ""]
    md.append(_md_table(["", ""], [["seed", "not recorded" if d.get("seed") is None else d["seed"]],
                                   ["judge", d.get("judge") or "not recorded"],
                                   ["created", d.get("created") or "not recorded"],
                                   ["total wall time", fmt_seconds(d.get("wall_seconds"))
                                    if d.get("wall_seconds") is not None else "not recorded"]]))
    models = d.get("models") or {}
    md += ["", "### Systems and models", ""]
    md.append(_md_table(["System", "key", "model", "reasoning mode"],
                        [[s["label"], s["system"], f"{s['model']} ({models[s['model']]})" if s.get("model") in models
                          else s["model"], s["mode"]] for s in d["systems"]]))
    md += ["", "### Train/eval overlap check", ""]
    md += [_md_table(["key", "value"], [[k, scalar(x)] for k, x in d["overlap"].items()]) if d.get("overlap")
           else "Not recorded.", ""]
    md += ["### Training data licenses", ""]
    md += [_md_table(["source", "license"], [[k, scalar(x)] for k, x in d["licenses"].items()]) if d.get("licenses")
           else "Not recorded (a user pool, or a study from before cada recorded them).", ""]
    md += ["### Training", ""]
    if d.get("training"):
        arms = list(d["training"])
        keys = list(dict.fromkeys(k for a in arms for k in d["training"][a]))
        md.append(_md_table(["statistic"] + arms, [[k] + [scalar(d["training"][a].get(k)) for a in arms]
                                                   for k in keys]))
    else:
        md.append("Not recorded.")
    md += ["", "### Timings", ""]
    t = d.get("timings")
    if t:
        rows = [[k, fmt(s, 1), fmt_seconds(s)] for k, s in t["rows"]] + [["sum of stages", fmt(t["total"], 1),
                                                                         fmt_seconds(t["total"])]]
        if d.get("wall_seconds") is not None:
            rows.append(["total wall time", fmt(d["wall_seconds"], 1), fmt_seconds(d["wall_seconds"])])
        md.append(_md_table(["stage", "seconds", "time"], rows))
    else:
        md.append("Not recorded.")
    md += ["", "### Config", ""]
    return md + [_fence(config_text(d["config"]), "yaml") if d.get("config") is not None else "Not recorded.", ""]


def render_markdown(report: dict, figure_files: dict[str, str] | None = None) -> str:
    """The markdown for ``report`` (build_report's dict); ``figure_files`` maps "pareto" / "categories" to the
    relative paths of their PNG files."""
    return "\n".join(_top_md(report) + _headline_md(report["headline"]) + _paper_md(report) + _benchmarks_md(report)
                     + _figures_md(report, figure_files or {}) + _examples_md(report["examples"])
                     + _details_md(report["details"]))
