"""The self-contained HTML page: inline CSS, plots inline as base64 PNG, no scripts, no external assets. It only lays
out the dict :func:`cada.report.build.build_report` returns. Every piece of model or prompt text goes through
``html.escape``: model outputs are untrusted.

The text helpers both renderers share (``clip``, ``badge``, ``ci_cell``, ``cat_cell``, ``scalar``,
``config_text``) live here and the markdown renderer imports them.
"""

from __future__ import annotations

import base64
import html
import json

from cada.report.build import PAPER_NOTE, fmt, fmt_ci, fmt_seconds

# the judge label a well-behaved model gives, per kind of prompt (drives the badge colour)
WANTED = {"harmful": "refuse", "benign": "comply"}
RESPONSE_CHARS, PROMPT_CHARS, REASONING_CHARS = 400, 600, 1500

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --head:#f6f8fa; --good:#1a7f37; --good-bg:#dafbe1;
  --bad:#b42318; --bad-bg:#ffebe9; --mid:#9a6700; --mid-bg:#fff8c5; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg); margin: 0 auto;
  max-width: 1200px; padding: 24px 28px 60px; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.25rem; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.02rem; margin: 22px 0 8px; }
.meta, .note, .muted { color: var(--muted); }
.meta { margin: 0 0 16px; font-size: .9rem; }
.note { font-size: .88rem; margin: 6px 0; }
nav { font-size: .88rem; margin: 8px 0 4px; }
nav a { color: #0969da; text-decoration: none; margin-right: 14px; }
.verdict { border-left: 4px solid var(--muted); background: var(--head); padding: 10px 14px; margin: 14px 0; }
.verdict.yes { border-color: var(--good); } .verdict.no { border-color: var(--bad); }
.table-wrap { overflow-x: auto; margin: 8px 0 4px; }
table { border-collapse: collapse; font-size: .88rem; }
th, td { border: 1px solid var(--line); padding: 5px 9px; vertical-align: top; }
th { background: var(--head); text-align: left; font-weight: 600; }
thead th { vertical-align: bottom; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: var(--good-bg); font-weight: 600; }
th small { font-weight: 400; color: var(--muted); }
code { font: .86em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--head);
  padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
pre { font: .8rem/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--head);
  border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; white-space: pre-wrap;
  overflow-wrap: anywhere; max-height: 520px; overflow: auto; }
figure { margin: 10px 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: .85rem; }
.warning { border: 1px solid #d4a72c; background: var(--mid-bg); padding: 10px 14px; border-radius: 6px;
  margin: 10px 0 16px; }
.example { border: 1px solid var(--line); border-radius: 8px; margin: 16px 0; padding: 12px 14px;
  break-inside: avoid; }
.example h3 { margin: 0 0 8px; }
.tag { display: inline-block; font-size: .75rem; font-weight: 600; text-transform: uppercase; letter-spacing: .03em;
  padding: 1px 7px; border-radius: 10px; background: var(--head); border: 1px solid var(--line); margin-right: 6px; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; font-size: .86rem; }
.prompt { background: var(--head); border-radius: 6px; padding: 8px 10px; margin-bottom: 10px; }
.responses { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 10px; }
.resp { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; min-width: 0; }
.who { font-weight: 600; font-size: .86rem; margin-bottom: 5px; }
.badge { display: inline-block; font-size: .72rem; font-weight: 600; padding: 0 7px; border-radius: 10px;
  margin-left: 4px; border: 1px solid currentColor; }
.badge.good { color: var(--good); background: var(--good-bg); }
.badge.bad { color: var(--bad); background: var(--bad-bg); }
.badge.mid { color: var(--mid); background: var(--mid-bg); } .badge.none { color: var(--muted); background: #fff; }
details { margin-top: 6px; font-size: .84rem; } summary { cursor: pointer; color: var(--muted); }
em.empty { color: var(--muted); }
@media print { body { max-width: none; padding: 0; font-size: 12px; } nav { display: none; }
  pre { max-height: none; } h2 { break-after: avoid; } }
"""

_e = html.escape


def clip(text: str, n: int) -> tuple[str, int]:
    """The first ``n`` characters of ``text`` and how many were cut."""
    return (text, 0) if len(text) <= n else (text[:n].rstrip(), len(text) - n)


def badge(label, kind: str | None, correct=None) -> tuple[str, str]:
    """(css class, text) for a judge label: green when it is what a good model does on this kind of prompt."""
    if kind == "utility" and correct is not None:
        return ("good" if correct else "bad"), ("correct" if correct else "incorrect")
    if label is None:
        return "none", "unjudged"
    if label == "partial":
        return "mid", "partial"
    wanted = WANTED.get(str(kind))
    return ("none" if wanted is None else "good" if label == wanted else "bad"), str(label)


def _html_table(head: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """head: already-escaped header cells; rows: (css class, already-escaped html) per cell."""
    out = ['<div class="table-wrap"><table>']
    if head:
        out += ["<thead><tr>", *(f"<th>{h}</th>" for h in head), "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>")
        for i, (cls, cell) in enumerate(row):
            tag = "th" if i == 0 else "td"
            out.append(f'<{tag} class="{cls}">{cell}</{tag}>' if cls else f"<{tag}>{cell}</{tag}>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _kv_html(d: dict) -> str:
    return _html_table(["key", "value"], [[("", f"<code>{_e(str(k))}</code>"), ("", _e(scalar(v)))]
                                          for k, v in d.items()])


def scalar(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        s = json.dumps(v, ensure_ascii=False)
        return s if len(s) <= 200 else s[:197] + "…"
    return "—" if v is None else str(v)


def config_text(config) -> str:
    import yaml

    try:
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=110).rstrip()
    except yaml.YAMLError:
        return json.dumps(config, indent=2, ensure_ascii=False, default=str)


def _benchmark_table_html(pb: dict) -> str:
    """Two header rows: the benchmark (spanning its columns, with n), then the rate shown in each column."""
    spans: list[list] = []  # [benchmark, kind, n, count]
    for c in pb["columns"]:
        if spans and spans[-1][0] == c["benchmark"]:
            spans[-1][3] += 1
        else:
            spans.append([c["benchmark"], c.get("kind"), c.get("n"), 1])
    top = "".join(f"<th colspan='{k}'>{_e(str(b))}<br><small>{_e(str(kind or ''))}"
                  f"{_e(f' · n = {n}') if n is not None else ''}</small></th>" for b, kind, n, k in spans)
    # a column whose n is not its benchmark's (the attacks of one benchmark: wrappers double it) says its own
    first_n = {}
    for c in pb["columns"]:
        first_n.setdefault(c["benchmark"], c.get("n"))

    def own_n(c: dict) -> str:
        return f" · n = {c.get('n')}" if c.get("n") != first_n[c["benchmark"]] else ""

    sub = "".join(f"<th><small>{_e(c['label'] + own_n(c))}</small></th>" for c in pb["columns"])
    out = [f"<div class='table-wrap'><table><thead><tr><th rowspan='2'>System</th>{top}</tr><tr>{sub}</tr></thead>"
           "<tbody>"]
    for r in pb["rows"]:
        cells = "".join(f"<td class='num'>{_e(ci_cell(cell, c.get('n')))}</td>"
                        for c, cell in zip(pb["columns"], r["cells"]))
        out.append(f"<tr><th>{_e(r['label'])}</th>{cells}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def ci_cell(cell: dict | None, expected_n) -> str:
    if cell is None:
        return "—"
    s = fmt_ci(cell)
    if cell.get("n") is not None and expected_n is not None and cell["n"] != expected_n:
        s += f" (n = {cell['n']})"
    return s



def _page_top(report: dict) -> list[str]:
    """Title, the run's date / seed / wall time, the section links, the summary and the verdict."""
    d, v = report["details"], report["verdict"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{_e(report['title'])}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(report['title'])}</h1>"]
    meta = [f"created {report['created']}" if report.get("created") else None,
            f"seed {d['seed']}" if d.get("seed") is not None else None,
            f"wall time {fmt_seconds(d['wall_seconds'])}" if d.get("wall_seconds") is not None else None]
    if any(meta):
        parts.append(f"<p class='meta'>{_e(' · '.join(m for m in meta if m))}</p>")
    paper = "<a href='#paper'>The paper's tables</a>" if (report.get("paper") or {}).get("columns") else ""
    parts.append(f"<nav><a href='#headline'>Headline</a>{paper}<a href='#benchmarks'>Per benchmark</a>"
                 "<a href='#pareto'>Safety vs over-refusal</a><a href='#categories'>By category</a>"
                 "<a href='#examples'>Examples</a><a href='#details'>Run details</a></nav>")
    parts.append(f"<p>{_e(report['summary'])}</p>")
    cls = {True: "yes", False: "no"}.get(v["all_hold"], "")
    parts.append(f"<div class='verdict {cls}'><strong>{_e(v['conclusion'])}</strong> "
                 f"{_e(' '.join(v['comparisons']))} <span class='muted'>{_e(v['note'])}</span></div>")
    return parts


def _headline_html(h: dict) -> list[str]:
    parts = ["<h2 id='headline'>Headline</h2>"]
    if not h["columns"]:
        return parts + ["<p class='muted'>Headline numbers not recorded.</p>"]
    head = ["System"] + [_e(c["label"]) for c in h["columns"]]
    rows = [[("", _e(r["label"]))] + [("num best" if c["key"] in r["best"] else "num",
                                        fmt(r["values"][c["key"]], 3 if c["key"] == "reference_loglik" else 2))
                                       for c in h["columns"]] for r in h["rows"]]
    parts.append(_html_table(head, rows))
    parts.append(f"<p class='note'>Best value per column highlighted. Harmful and jailbreak refusal: higher is "
                 f"better; benign over-refusal: lower is better. Refusal rates here count refusals and partial "
                 f"refusals (for harmful sets the per-benchmark table gives both). Source: {_e(h['source'])}.</p>")
    return parts


def _benchmarks_html(report: dict) -> list[str]:
    """The per-benchmark table, then one per-attack table for each benchmark that breaks down by attack."""
    parts = ["<h2 id='benchmarks'>Per-benchmark results</h2>",
             "<p class='note'>Rate with its 95% bootstrap interval. Harmful sets: refusal rate and refused-or-"
             "partial rate (higher is better); benign sets: over-refusal rate, refused or partial as in the headline "
             "(lower is better); utility sets: accuracy.</p>",
             _benchmark_table_html(report["per_benchmark"])]
    for t in report["per_attack"]:
        parts.append(f"<h3>Refusal rate by jailbreak attack: {_e(t['benchmark'])}</h3>")
        head = ["System"] + [_e(a) for a in t["attacks"]]
        rows = [[("", _e(r["label"]))] + [("num", _e(ci_cell(r["cells"][a], None))) for a in t["attacks"]]
                for r in t["rows"]]
        parts.append(_html_table(head, rows))
    return parts


def _figures_html(report: dict, figures: dict[str, bytes]) -> list[str]:
    parts = ["<h2 id='pareto'>Safety vs over-refusal</h2>"]
    if figures.get("pareto"):
        parts.append(_img(figures["pareto"], "Pareto plot: harmful compliance against benign over-refusal",
                          "Each point is one system: x = benign over-refusal, y = harmful compliance (1 − harmful "
                          "refusal). Both lower is better; the shaded lower-left corner is the goal."))
    else:
        parts.append("<p class='muted'>Not recorded (needs harmful and benign refusal rates).</p>")
    parts.append("<h2 id='categories'>Harmful refusal by category</h2>")
    cat = report["categories"]
    if figures.get("categories"):
        parts.append(_img(figures["categories"], "Refusal rate by harm category, per system",
                          f"Refusal rate per harm category, pooled over {', '.join(cat['benchmarks'])} "
                          f"(weighted by n)."))
        head = ["System"] + [_e(c) for c in cat["categories"]]
        rows = [[("", _e(r["label"]))] + [("num", _e(cat_cell(r["rates"].get(c)))) for c in cat["categories"]]
                for r in cat["rows"]]
        parts.append(f"<details><summary>the numbers</summary>{_html_table(head, rows)}</details>")
    else:
        parts.append("<p class='muted'>Not recorded (no per-category metrics on the harmful benchmarks).</p>")
    return parts


def _examples_html(examples: list[dict]) -> list[str]:
    parts = ["<h2 id='examples'>Example transcripts</h2>",
             "<div class='warning'><strong>Content warning:</strong> this section contains descriptions of "
             "harmful requests; responses are model outputs, shown unedited (truncated) and not endorsed.</div>"]
    if examples:
        parts.append(f"<p class='note'>Up to six prompts, preferring ones the systems disagree on. Badge: the judge's "
                     f"label, green when it is what a safe and helpful model does (refuse a harmful request, comply "
                     f"with a benign one), red when not, amber for partial. Responses cut at {RESPONSE_CHARS} "
                     f"characters.</p>")
    else:
        parts.append("<p class='muted'>No records found under eval/.</p>")
    return parts + [_example_html(i, ex) for i, ex in enumerate(examples, 1)]


def render_html(report: dict, figures: dict[str, bytes] | None = None) -> str:
    """The whole page for ``report`` (build_report's dict); ``figures`` maps "pareto" / "categories" to PNG bytes."""
    figures = figures or {}
    parts = _page_top(report)
    parts += _headline_html(report["headline"])
    if (report.get("paper") or {}).get("columns"):
        parts += ["<h2 id='paper'>The paper's tables</h2>", f"<p class='note'>{_e(PAPER_NOTE)}</p>",
                  _benchmark_table_html(report["paper"])]
    parts += _benchmarks_html(report)
    parts += _figures_html(report, figures)
    parts += _examples_html(report["examples"])
    parts += ["<h2 id='details'>Run details</h2>", _details_html(report["details"]), "</body></html>"]
    return "\n".join(parts)


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{_e(alt)}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def cat_cell(r: dict | None) -> str:
    """A pooled category rate with its n.

    >>> cat_cell({"value": 0.625, "n": 40}), cat_cell(None)
    ('0.62 (n = 40)', '—')
    """
    return "—" if not r else f"{fmt(r['value'])} (n = {r['n']})"


def _example_html(i: int, ex: dict) -> str:
    tags = [ex["group"]] + [str(x) for x in (ex.get("category"), ex.get("attack")) if x]
    prompt, cut = clip(ex["prompt"], PROMPT_CHARS)
    more = f"<span class='muted'> … [{cut} more characters]</span>" if cut else ""
    out = [f"<article class='example'><h3>{i}. {''.join(f'<span class=tag>{_e(t)}</span>' for t in tags)}"
           f"<span class='muted'>{_e(ex['benchmark'])} · {_e(ex['id'])}</span></h3>",
           f"<div class='prompt'><div class='who'>Prompt</div><div class='text'>{_e(prompt)}{more}</div></div>",
           "<div class='responses'>"]
    for r in ex["responses"]:
        if r["missing"]:
            out.append(f"<div class='resp'><div class='who'>{_e(r['label'])}</div>"
                       f"<em class='empty'>no record for this prompt</em></div>")
            continue
        cls, text = badge(r["judge"], ex.get("kind"), r.get("correct"))
        body, cut = clip(r["response"], RESPONSE_CHARS)
        body_html = _e(body) if body.strip() else "<em class='empty'>(empty response)</em>"
        if cut:
            body_html += f"<span class='muted'> … [{cut} more characters]</span>"
        out.append(f"<div class='resp'><div class='who'>{_e(r['label'])}<span class='badge {cls}'>{_e(text)}</span>"
                   f"</div><div class='text'>{body_html}</div>")
        if r["reasoning"].strip():
            reasoning, rcut = clip(r["reasoning"], REASONING_CHARS)
            cited = f" · cites {', '.join(map(str, r['cited_cases']))}" if r["cited_cases"] else ""
            rmore = f" … [{rcut} more characters]" if rcut else ""
            out.append(f"<details><summary>reasoning{_e(cited)}</summary><div class='text'>{_e(reasoning)}"
                       f"<span class='muted'>{rmore}</span></div></details>")
        out.append("</div>")
    out.append("</div></article>")
    return "".join(out)


def _details_html(d: dict) -> str:
    out = []
    facts = {"seed": d.get("seed"), "judge": d.get("judge"), "created": d.get("created"),
             "total wall time": fmt_seconds(d["wall_seconds"]) if d.get("wall_seconds") is not None else None}
    out.append(_html_table([], [[("", _e(k)), ("", _e("not recorded" if v is None else str(v)))]
                                      for k, v in facts.items()]))
    out.append("<h3>Systems and models</h3>")
    models = d.get("models") or {}
    out.append(_html_table(["System", "key", "model", "reasoning mode"],
                           [[("", _e(s["label"])), ("", f"<code>{_e(s['system'])}</code>"),
                             ("", _e(str(s["model"])) + (f"<br><code>{_e(str(models[s['model']]))}</code>"
                                                         if s.get("model") in models else "")),
                             ("", _e(str(s["mode"])))] for s in d["systems"]]))
    out.append("<h3>Train/eval overlap check</h3>")
    out.append(_kv_html(d["overlap"]) if d.get("overlap") else "<p class='muted'>Not recorded.</p>")
    out.append("<h3>Training data licenses</h3>")
    out.append(_kv_html(d["licenses"]) if d.get("licenses") else "<p class='muted'>Not recorded (a user pool, or "
               "a study from before cada recorded them).</p>")
    out.append("<h3>Training</h3>")
    if d.get("training"):
        arms = list(d["training"])
        keys = list(dict.fromkeys(k for a in arms for k in d["training"][a]))
        out.append(_html_table(["statistic"] + [_e(a) for a in arms],
                               [[("", f"<code>{_e(k)}</code>")] + [("num", _e(scalar(d["training"][a].get(k))))
                                                                   for a in arms] for k in keys]))
    else:
        out.append("<p class='muted'>Not recorded.</p>")
    out.append("<h3>Timings</h3>")
    t = d.get("timings")
    if t:
        rows = [[("", _e(str(k))), ("num", _e(fmt(s, 1))), ("num", _e(fmt_seconds(s)))] for k, s in t["rows"]]
        rows.append([("", "<strong>sum of stages</strong>"), ("num", _e(fmt(t["total"], 1))),
                     ("num", _e(fmt_seconds(t["total"])))])
        if d.get("wall_seconds") is not None:
            rows.append([("", "<strong>total wall time</strong>"), ("num", _e(fmt(d["wall_seconds"], 1))),
                         ("num", _e(fmt_seconds(d["wall_seconds"])))])
        out.append(_html_table(["stage", "seconds", "time"], rows))
    else:
        out.append("<p class='muted'>Not recorded.</p>")
    out.append("<h3>Config</h3>")
    out.append(f"<pre>{_e(config_text(d['config']))}</pre>" if d.get("config") is not None
               else "<p class='muted'>Not recorded.</p>")
    return "\n".join(out)
