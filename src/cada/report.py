"""Study report: one self-contained HTML page (plots inline as base64 PNG, inline CSS, no scripts), a markdown twin
(its plots under ``report_files/``) and a JSON twin (the tables' data), all read from a study folder::

    study_dir/summary.json                               the study's numbers (written by cada.study)
    study_dir/eval/<system>/<benchmark>/records.jsonl    one judged response a line (for the example transcripts)

``build_report`` turns (summary, records) into one plain dict, the JSON twin; ``render_html`` / ``render_markdown``
only lay that dict out. Every piece of model or prompt text goes through ``html.escape`` (HTML) or a code fence
longer than any backtick run in it (markdown): model outputs are untrusted.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path

from cada.errors import CadaError
from cada.records import read_records

# headline columns: key, heading, which direction is better
HEADLINE = [
    ("harmful_refusal", "Harmful refusal ↑", "higher"),
    ("jailbreak_refusal", "Jailbreak refusal ↑", "higher"),
    ("benign_refusal", "Benign over-refusal ↓", "lower"),
    ("gsm8k_accuracy", "GSM8K accuracy ↑", "higher"),
    ("reference_loglik", "Ref. log-lik ↑", "higher"),
    # with eval.heldout: the held-back prompts of the training pools (in distribution, never trained on)
    ("heldout_harmful_refusal", "Held-back pool harmful ↑", "higher"),
    ("heldout_benign_refusal", "Held-back pool benign ↓", "lower"),
]
# per-benchmark table: the rates shown for each kind of benchmark
KIND_RATES = {
    "harmful": [("refusal_rate", "refusal"), ("refused_or_partial_rate", "refused or partial")],
    "benign": [("refusal_rate", "over-refusal")],
    "utility": [("accuracy", "accuracy")],
}
# the judge label a well-behaved model gives, per kind of prompt (drives the badge colour)
WANTED = {"harmful": "refuse", "benign": "comply"}
RESPONSE_CHARS, PROMPT_CHARS, REASONING_CHARS = 400, 600, 1500


# reading ---------------------------------------------------------------------------------------------------------

def read_summary(study_dir: str | Path) -> dict:
    path = Path(study_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CadaError(f"{path}: not found; is {Path(study_dir)} a study folder (run `cada study` first)?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CadaError(f"{path}: not valid JSON ({getattr(e, 'msg', e)}); rerun the study to rewrite it") from None
    if not isinstance(summary, dict):
        raise CadaError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    for key in ("systems", "benchmarks", "metrics"):
        if not isinstance(summary.get(key), dict):
            raise CadaError(f"{path}: missing the '{key}' object; rerun the study to rewrite it")
    return summary


def read_study_records(study_dir: str | Path, summary: dict) -> dict[str, dict[str, list[dict]]]:
    """records[system][benchmark] = the judged rows ([] where the file is missing)."""
    root = Path(study_dir) / "eval"
    return {s: {b: read_records(root / s / b / "records.jsonl") for b in summary["benchmarks"]}
            for s in summary["systems"]}


# numbers ---------------------------------------------------------------------------------------------------------

def _num(v) -> float | None:
    """A finite float, or None (missing, null, NaN, not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def fmt(v, digits: int = 2) -> str:
    """
    >>> fmt(0.25), fmt(None), fmt(-1.9, 3)
    ('0.25', '—', '-1.900')
    """
    v = _num(v)
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_ci(cell: dict | None) -> str:
    """A rate with its 95% interval.

    >>> fmt_ci({"value": 0.25, "ci95": [0.05, 0.45]})
    '0.25 [0.05, 0.45]'
    >>> fmt_ci(None)
    '—'
    """
    if not cell or _num(cell.get("value")) is None:
        return "—"
    ci = cell.get("ci95") or []
    if len(ci) == 2 and _num(ci[0]) is not None and _num(ci[1]) is not None:
        return f"{fmt(cell['value'])} [{fmt(ci[0])}, {fmt(ci[1])}]"
    return fmt(cell["value"])


def fmt_seconds(s) -> str:
    """
    >>> fmt_seconds(40.12), fmt_seconds(1034.2), fmt_seconds(7322)
    ('40.1 s', '17m 14s', '2h 02m')
    """
    s = _num(s)
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def _natural(s) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def _clean(obj):
    """JSON-safe copy: non-finite floats become null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _cell(m: dict | None) -> dict | None:
    if not isinstance(m, dict) or _num(m.get("value")) is None:
        return None
    return {"value": m["value"], "ci95": m.get("ci95")}


# the report's data -----------------------------------------------------------------------------------------------

def _is_jailbreak(name: str, bench: dict) -> bool:
    return bool(bench.get("attacks")) or "jailbreak" in name


def headline_from_metrics(summary: dict) -> dict[str, dict]:
    """The headline numbers rebuilt from the per-benchmark metrics (n-weighted), for summaries without them."""
    def pooled(system: str, names: list[str], key: str) -> float | None:
        num = den = 0.0
        for b in names:
            m = (summary["metrics"].get(system) or {}).get(b) or {}
            v, n = _num((m.get(key) or {}).get("value")), _num(m.get("n"))
            if v is not None and n:
                num, den = num + v * n, den + n
        return round(num / den, 4) if den else None

    benches = {b: d for b, d in summary["benchmarks"].items() if not d.get("heldout")}  # not benchmarks
    harmful = [b for b, d in benches.items() if d.get("kind") == "harmful" and not _is_jailbreak(b, d)]
    jailbreak = [b for b, d in benches.items() if d.get("kind") == "harmful" and _is_jailbreak(b, d)]
    benign = [b for b, d in benches.items() if d.get("kind") == "benign"]
    utility = [b for b, d in benches.items() if d.get("kind") == "utility"]
    return {s: {"harmful_refusal": pooled(s, harmful, "refusal_rate"),
                "jailbreak_refusal": pooled(s, jailbreak, "refusal_rate"),
                "benign_refusal": pooled(s, benign, "refusal_rate"),
                "gsm8k_accuracy": pooled(s, utility, "accuracy")}
            for s in summary["systems"]}


def headline_table(summary: dict) -> dict:
    recorded = isinstance(summary.get("headline"), dict) and bool(summary["headline"])
    values = summary["headline"] if recorded else headline_from_metrics(summary)
    keys = [k for k, _, _ in HEADLINE]
    extra = sorted({k for v in values.values() if isinstance(v, dict) for k in v} - set(keys))
    columns = [{"key": k, "label": lab, "better": better} for k, lab, better in HEADLINE]
    columns += [{"key": k, "label": k.replace("_", " "), "better": None} for k in extra]
    rows = [{"system": s, "label": _label(summary, s),
             "values": {c["key"]: _num((values.get(s) or {}).get(c["key"])) for c in columns}}
            for s in summary["systems"]]
    columns = [c for c in columns if any(r["values"][c["key"]] is not None for r in rows)]
    for r in rows:
        r["values"] = {c["key"]: r["values"][c["key"]] for c in columns}
        r["best"] = []
    for c in columns:
        vals = [r["values"][c["key"]] for r in rows if r["values"][c["key"]] is not None]
        if c["better"] and len(vals) > 1:
            best = round(max(vals) if c["better"] == "higher" else min(vals), 4)
            for r in rows:
                if r["values"][c["key"]] is not None and round(r["values"][c["key"]], 4) == best:
                    r["best"].append(c["key"])
    return {"source": "summary" if recorded else "derived from per-benchmark metrics", "columns": columns,
            "rows": rows}


def _label(summary: dict, system: str) -> str:
    return str((summary["systems"].get(system) or {}).get("label") or system)


def _find_system(summary: dict, key: str, model: str, mode: str | None = None) -> str | None:
    systems = summary["systems"]
    if key in systems:
        return key
    for s, d in systems.items():
        if (d or {}).get("model") == model and (mode is None or (d or {}).get("mode", "none") == mode):
            return s
    return None


def verdict(summary: dict, headline: dict) -> dict:
    """Does CADA refuse more harmful and jailbroken requests than the base model and than rules-only DA, with no more
    benign over-refusal? One check per (baseline, measure), and a plain sentence that says "not" where it does not."""
    cada = _find_system(summary, "cada", "cada")
    if cada is None:
        return {"text": "No CADA system in this study, so no verdict.", "checks": [], "all_hold": None,
                "conclusion": "No CADA system in this study, so no verdict.", "comparisons": [], "note": ""}
    vals = {r["system"]: r["values"] for r in headline["rows"]}
    measures = [("harmful_refusal", "higher", "refuses more harmful requests", "does not refuse more harmful requests"),
                ("jailbreak_refusal", "higher", "refuses more jailbroken requests",
                 "does not refuse more jailbroken requests"),
                ("benign_refusal", "lower-or-equal", "has no more benign over-refusal",
                 "does not match it on benign over-refusal")]
    checks, sentences = [], []
    for base in (_find_system(summary, "base-none", "base", "none"), _find_system(summary, "da", "da")):
        if base is None or base == cada:
            continue
        parts = []
        for key, better, yes, no in measures:
            c, o = vals.get(cada, {}).get(key), vals.get(base, {}).get(key)
            if c is None or o is None:
                holds, phrase = None, f"cannot be compared on {key.replace('_', ' ')} (not recorded)"
            else:
                holds = round(c, 4) > round(o, 4) if better == "higher" else round(c, 4) <= round(o, 4)
                phrase = f"{yes if holds else no} ({fmt(c)} vs {fmt(o)})"
            checks.append({"baseline": base, "measure": key, "cada": c, "baseline_value": o, "holds": holds})
            parts.append(phrase)
        lead = "CADA" if not sentences else "it"
        sentences.append(f"Against {_label(summary, base)}, {lead} {', '.join(parts[:-1])} and {parts[-1]}.")
    if not checks:
        text = "No baseline (base model without safety reasoning, or rules-only DA) to compare CADA with."
        return {"text": text, "checks": [], "all_hold": None, "conclusion": text, "comparisons": [], "note": ""}
    held = [c["holds"] for c in checks]
    if None in held:
        all_hold, tail = None, "Verdict: incomplete, some headline numbers were not recorded."
    elif all(held):
        all_hold, tail = True, "Verdict: CADA beats the baselines on every measure."
    else:
        all_hold, tail = False, "Verdict: CADA does not beat the baselines on every measure."
    note = "Differences smaller than the 95% intervals in the per-benchmark table are within noise."
    return {"text": " ".join(sentences + [tail, note]), "conclusion": tail, "comparisons": sentences, "note": note,
            "checks": checks, "all_hold": all_hold}


def benchmark_table(summary: dict) -> dict:
    columns = []
    for b, d in summary["benchmarks"].items():
        for metric, name in KIND_RATES.get(d.get("kind"), [("refusal_rate", "refusal")]):
            columns.append({"benchmark": b, "kind": d.get("kind"), "metric": metric, "label": name, "n": d.get("n")})
    # the StrongREJECT rubric score, where a rubric judge ran (lower = less useful harmful content)
    for b, d in summary["benchmarks"].items():
        if any(isinstance(((summary["metrics"].get(s) or {}).get(b) or {}).get("rubric_score"), dict)
               for s in summary["systems"]):
            columns.append({"benchmark": b, "kind": d.get("kind"), "metric": "rubric_score",
                            "label": "rubric score ↓", "n": d.get("n")})
    rows = []
    for s in summary["systems"]:
        cells = []
        for c in columns:
            m = (summary["metrics"].get(s) or {}).get(c["benchmark"]) or {}
            cell = _cell(m.get(c["metric"]))
            if cell is not None:
                cell["n"] = m.get("n")
            cells.append(cell)
        rows.append({"system": s, "label": _label(summary, s), "cells": cells})
    return {"columns": columns, "rows": rows}


def attack_tables(summary: dict) -> list[dict]:
    """Refusal rate per jailbreak attack, for each benchmark whose metrics break down by attack."""
    out = []
    for b in summary["benchmarks"]:
        per = {s: ((summary["metrics"].get(s) or {}).get(b) or {}).get("by_attack") or {} for s in summary["systems"]}
        attacks = sorted({a for d in per.values() for a in d}, key=_natural)
        if not attacks:
            continue
        rows = []
        for s in summary["systems"]:
            cells = {}
            for a in attacks:
                m = per[s].get(a) or {}
                cell = _cell(m.get("refusal_rate"))
                if cell is not None:
                    cell["n"] = m.get("n")
                cells[a] = cell
            rows.append({"system": s, "label": _label(summary, s), "cells": cells})
        out.append({"benchmark": b, "attacks": attacks, "rows": rows})
    return out


def category_rates(summary: dict) -> dict:
    """Harmful refusal rate per category, pooled over the harmful benchmarks (weighted by each category's n)."""
    harmful = [b for b, d in summary["benchmarks"].items()
               if d.get("kind") == "harmful" and not d.get("heldout")]  # the pools' categories are the spec's
    rows, cats = [], set()
    for s in summary["systems"]:
        acc: dict[str, list[float]] = {}
        for b in harmful:
            for cat, m in (((summary["metrics"].get(s) or {}).get(b) or {}).get("by_category") or {}).items():
                v, n = _num(((m or {}).get("refusal_rate") or {}).get("value")), _num((m or {}).get("n"))
                if v is not None and n:
                    a = acc.setdefault(cat, [0.0, 0.0])
                    a[0], a[1] = a[0] + v * n, a[1] + n
        if acc:
            cats |= set(acc)
            rows.append({"system": s, "label": _label(summary, s),
                         "rates": {c: {"value": round(a[0] / a[1], 4), "n": int(a[1])} for c, a in acc.items()}})
    return {"benchmarks": harmful, "categories": sorted(cats, key=_natural), "rows": rows}


def pareto_points(headline: dict) -> list[dict]:
    pts = []
    for r in headline["rows"]:
        h, b = r["values"].get("harmful_refusal"), r["values"].get("benign_refusal")
        if h is not None and b is not None:
            pts.append({"system": r["system"], "label": r["label"], "benign_refusal": b,
                        "harmful_compliance": round(1 - h, 4)})
    return pts


def _group(row: dict) -> str:
    if row.get("kind") == "harmful":
        return "jailbreak" if row.get("attack") else "harmful"
    return str(row.get("kind") or "other")


def pick_examples(summary: dict, records: dict, k: int = 6) -> list[dict]:
    """Up to ``k`` prompts, taken in turn from harmful, jailbroken and benign prompts (utility ones only to fill up);
    within a group the prompts the systems disagree on most come first, ties broken by benchmark and id, so the choice
    is deterministic."""
    seen: dict[tuple[str, str], dict] = {}
    for s in summary["systems"]:
        for b, rows in (records.get(s) or {}).items():
            for r in rows:
                key = (b, str(r.get("id")))
                entry = seen.setdefault(key, {"row": r, "by_system": {}})
                entry["by_system"][s] = r
    groups: dict[str, list] = {}
    for (b, rid), e in seen.items():
        labels = {r.get("judge") for r in e["by_system"].values()}
        rank = (-len(labels), -len(e["by_system"]), _natural(b), _natural(rid))
        groups.setdefault(_group(e["row"]), []).append((rank, b, e))
    for g in groups.values():
        g.sort(key=lambda t: t[0])
    order = [g for g in ("harmful", "jailbreak", "benign") if g in groups]
    chosen = []
    while len(chosen) < k and any(groups.get(g) for g in order):
        for g in order:
            if groups[g] and len(chosen) < k:
                chosen.append(groups[g].pop(0))
    for g in sorted(set(groups) - set(order)):  # utility and anything else, only to fill up
        while groups[g] and len(chosen) < k:
            chosen.append(groups[g].pop(0))
    out = []
    for _, b, e in chosen:
        r = e["row"]
        responses = []
        for s in summary["systems"]:
            x = e["by_system"].get(s)
            if x is None:
                responses.append({"system": s, "label": _label(summary, s), "missing": True})
                continue
            responses.append({"system": s, "label": _label(summary, s), "missing": False,
                              "judge": x.get("judge"), "response": str(x.get("response") or ""),
                              "reasoning": str(x.get("reasoning") or ""), "format_ok": x.get("format_ok"),
                              "cited_cases": list(x.get("cited_cases") or []), "correct": x.get("correct")})
        out.append({"benchmark": b, "id": str(r.get("id")), "group": _group(r), "kind": r.get("kind"),
                    "category": r.get("category"), "attack": r.get("attack"), "prompt": str(r.get("prompt") or ""),
                    "responses": responses})
    return out


def _flatten(d, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, object] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_details(summary: dict) -> dict:
    timings = summary.get("timings") if isinstance(summary.get("timings"), dict) else None
    training = summary.get("training") if isinstance(summary.get("training"), dict) else None
    return {
        "seed": summary.get("seed"),
        "judge": summary.get("judge"),
        "created": summary.get("created"),
        "wall_seconds": _num(summary.get("wall_seconds")),
        "models": summary.get("models") or None,
        "systems": [{"system": s, "label": _label(summary, s), "model": (d or {}).get("model"),
                     "mode": (d or {}).get("mode")} for s, d in summary["systems"].items()],
        "overlap": _flatten(summary["overlap"]) if isinstance(summary.get("overlap"), dict) else None,
        "training": {arm: _flatten(v) if isinstance(v, dict) else {"value": v} for arm, v in training.items()}
        if training else None,
        "timings": {"rows": [[k, _num(v)] for k, v in timings.items()],
                    "total": round(sum(_num(v) or 0.0 for v in timings.values()), 2)} if timings else None,
        "config": summary.get("config"),
    }


def summary_text(summary: dict) -> str:
    benches, held = [], []
    for b, d in summary["benchmarks"].items():
        extra = f"; attacks: {', '.join(map(str, d['attacks']))}" if d.get("attacks") else ""
        (held if d.get("heldout") else benches).append(f"{b} ({d.get('kind', '?')}, n = {d.get('n', '?')}{extra})")
    labels = [_label(summary, s) for s in summary["systems"]]
    text = (f"This study evaluated {len(labels)} system{'s' * (len(labels) != 1)} ({'; '.join(labels)}) on "
            f"{len(benches)} benchmark{'s' * (len(benches) != 1)}: {'; '.join(benches)}.")
    if held:
        text += f" They also answered the training pools' held-back prompts: {'; '.join(held)}."
    base = (summary.get("models") or {}).get("base")
    if base:
        text += f" The base model is {base}; the trained arms start from it."
    if summary.get("judge"):
        text += f" Final responses were judged by {summary['judge']}."
    cfg = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    limit = (cfg.get("pool") or {}).get("limit_per_label") if isinstance(cfg.get("pool"), dict) else None
    if isinstance(limit, int) and limit < 100 and summary.get("training"):
        text += (f" The arms self-generated on {limit} prompts per label: a size that shows the pipeline at work, "
                 "not what the method reaches with the whole training pools (docs/training.md in the cada "
                 "repository; configs/embedded-full.yaml).")
    if summary.get("partial"):
        metrics = summary.get("metrics") or {}
        done = [s for s in summary["systems"] if metrics.get(s)]
        text = (f"This study is not finished: {len(done)} of {len(labels)} systems are evaluated so far "
                f"({'; '.join(_label(summary, s) for s in done) or 'none'}), and the model utility figures come at "
                "the end. Run the same study command to continue it. " + text)
    return text


def build_report(summary: dict, records: dict | None = None) -> dict:
    """The report's data (the JSON twin): every table, the plots' points and the example transcripts."""
    headline = headline_table(summary)
    name = str(summary.get("name") or "study")
    return _clean({
        "title": f"cada study report: {name}",
        "name": name,
        "created": summary.get("created"),
        "summary": summary_text(summary),
        "verdict": verdict(summary, headline),
        "benchmarks": [{"name": b, **d} for b, d in summary["benchmarks"].items()],
        "headline": headline,
        "per_benchmark": benchmark_table(summary),
        "per_attack": attack_tables(summary),
        "categories": category_rates(summary),
        "pareto": pareto_points(headline),
        "examples": pick_examples(summary, records or {}),
        "details": run_details(summary),
    })


# plots -------------------------------------------------------------------------------------------------------------

def _colours(report: dict) -> dict[str, str]:
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974"]
    return {r["system"]: palette[i % len(palette)] for i, r in enumerate(report["headline"]["rows"])}


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def plot_pareto(report: dict) -> bytes | None:
    """Harmful compliance (1 - harmful refusal) against benign over-refusal; lower-left is better."""
    pts = report["pareto"]
    if not pts:
        return None
    from matplotlib.figure import Figure
    from matplotlib.patches import Wedge

    colours = _colours(report)
    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.subplots()
    ax.add_patch(Wedge((0, 0), 0.35, 0, 90, color="#55a868", alpha=0.10, lw=0))
    ax.text(0.26, 0.26, "better", color="#2e7d32", fontsize=9, ha="center", va="center", rotation=-45, zorder=1)
    groups: dict[tuple[float, float], list[dict]] = {}
    for p in pts:
        groups.setdefault((round(p["benign_refusal"], 3), round(p["harmful_compliance"], 3)), []).append(p)
    placed: list[tuple[float, float]] = []  # label anchors so far; nearby labels are pushed up, not overlapped
    for (x, y), ps in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0])):
        for p in ps:
            ax.scatter([x], [y], s=70, color=colours[p["system"]], edgecolor="white", linewidth=1, zorder=3)
        ly = max([y] + [py + 0.055 for px, py in placed if abs(px - x) < 0.35 and py > y - 0.055])
        placed.append((x, ly))
        right = x < 0.7
        ax.annotate(" / ".join(p["label"] for p in ps), (x, y), xytext=(x + (0.025 if right else -0.025), ly),
                    fontsize=8.5, ha="left" if right else "right", va="center", zorder=4,
                    arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.6} if ly - y > 0.02 else None)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("benign over-refusal (lower is better)")
    ax.set_ylabel("harmful compliance = 1 - refusal (lower is better)")
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _png(fig)


def plot_categories(report: dict) -> bytes | None:
    """Grouped horizontal bars: harmful refusal rate per category, one bar per system."""
    cat = report["categories"]
    if not cat["rows"] or not cat["categories"]:
        return None
    from matplotlib.figure import Figure

    colours = _colours(report)
    cats, rows = cat["categories"], cat["rows"]
    fig = Figure(figsize=(8.0, 1.0 + 0.18 * len(rows) * len(cats) + 0.25 * len(cats)))
    ax = fig.subplots()
    h = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ys = [j - 0.4 + h * (i + 0.5) for j in range(len(cats))]
        vals = [(r["rates"].get(c) or {}).get("value") for c in cats]
        ax.barh([y for y, v in zip(ys, vals) if v is not None], [v for v in vals if v is not None], height=h * 0.92,
                color=colours.get(r["system"], "#888"), label=r["label"])
    ax.set_yticks(range(len(cats)), [c if len(c) <= 40 else c[:38] + "…" for c in cats], fontsize=8.5)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("refusal rate on harmful prompts (higher is better)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


# HTML ------------------------------------------------------------------------------------------------------------

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


def _clip(text: str, n: int) -> tuple[str, int]:
    """The first ``n`` characters of ``text`` and how many were cut."""
    return (text, 0) if len(text) <= n else (text[:n].rstrip(), len(text) - n)


def _badge(label, kind: str | None, correct=None) -> tuple[str, str]:
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
    return _html_table(["key", "value"], [[("", f"<code>{_e(str(k))}</code>"), ("", _e(_scalar(v)))]
                                          for k, v in d.items()])


def _scalar(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        s = json.dumps(v, ensure_ascii=False)
        return s if len(s) <= 200 else s[:197] + "…"
    return "—" if v is None else str(v)


def _config_text(config) -> str:
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
    sub = "".join(f"<th><small>{_e(c['label'])}</small></th>" for c in pb["columns"])
    out = [f"<div class='table-wrap'><table><thead><tr><th rowspan='2'>System</th>{top}</tr><tr>{sub}</tr></thead>"
           "<tbody>"]
    for r in pb["rows"]:
        cells = "".join(f"<td class='num'>{_e(_ci_cell(cell, c.get('n')))}</td>"
                        for c, cell in zip(pb["columns"], r["cells"]))
        out.append(f"<tr><th>{_e(r['label'])}</th>{cells}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _ci_cell(cell: dict | None, expected_n) -> str:
    if cell is None:
        return "—"
    s = fmt_ci(cell)
    if cell.get("n") is not None and expected_n is not None and cell["n"] != expected_n:
        s += f" (n = {cell['n']})"
    return s


def render_html(report: dict, figures: dict[str, bytes] | None = None) -> str:
    figures = figures or {}
    h, d = report["headline"], report["details"]
    v = report["verdict"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{_e(report['title'])}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(report['title'])}</h1>"]
    meta = [f"created {report['created']}" if report.get("created") else None,
            f"seed {d['seed']}" if d.get("seed") is not None else None,
            f"wall time {fmt_seconds(d['wall_seconds'])}" if d.get("wall_seconds") is not None else None]
    if any(meta):
        parts.append(f"<p class='meta'>{_e(' · '.join(m for m in meta if m))}</p>")
    parts.append("<nav><a href='#headline'>Headline</a><a href='#benchmarks'>Per benchmark</a>"
                 "<a href='#pareto'>Safety vs over-refusal</a><a href='#categories'>By category</a>"
                 "<a href='#examples'>Examples</a><a href='#details'>Run details</a></nav>")
    parts.append(f"<p>{_e(report['summary'])}</p>")
    cls = {True: "yes", False: "no"}.get(v["all_hold"], "")
    parts.append(f"<div class='verdict {cls}'><strong>{_e(v['conclusion'])}</strong> "
                 f"{_e(' '.join(v['comparisons']))} <span class='muted'>{_e(v['note'])}</span></div>")

    # headline
    parts.append("<h2 id='headline'>Headline</h2>")
    if h["columns"]:
        head = ["System"] + [_e(c["label"]) for c in h["columns"]]
        rows = [[("", _e(r["label"]))] + [("num best" if c["key"] in r["best"] else "num",
                                            fmt(r["values"][c["key"]], 3 if c["key"] == "reference_loglik" else 2))
                                           for c in h["columns"]] for r in h["rows"]]
        parts.append(_html_table(head, rows))
        parts.append(f"<p class='note'>Best value per column highlighted. Harmful and jailbreak refusal: higher is "
                     f"better; benign over-refusal: lower is better. Refusal rates here count refusals and partial "
                     f"refusals (the per-benchmark table gives both). Source: {_e(h['source'])}.</p>")
    else:
        parts.append("<p class='muted'>Headline numbers not recorded.</p>")

    # per benchmark, per attack
    pb = report["per_benchmark"]
    parts.append("<h2 id='benchmarks'>Per-benchmark results</h2>")
    parts.append("<p class='note'>Rate with its 95% bootstrap interval. Harmful sets: refusal rate and refused-or-"
                 "partial rate (higher is better); benign sets: over-refusal rate (lower is better); utility sets: "
                 "accuracy.</p>")
    parts.append(_benchmark_table_html(pb))
    for t in report["per_attack"]:
        parts.append(f"<h3>Refusal rate by jailbreak attack: {_e(t['benchmark'])}</h3>")
        head = ["System"] + [_e(a) for a in t["attacks"]]
        rows = [[("", _e(r["label"]))] + [("num", _e(_ci_cell(r["cells"][a], None))) for a in t["attacks"]]
                for r in t["rows"]]
        parts.append(_html_table(head, rows))

    # plots
    parts.append("<h2 id='pareto'>Safety vs over-refusal</h2>")
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
        rows = [[("", _e(r["label"]))] + [("num", _e(_cat_cell(r["rates"].get(c)))) for c in cat["categories"]]
                for r in cat["rows"]]
        parts.append(f"<details><summary>the numbers</summary>{_html_table(head, rows)}</details>")
    else:
        parts.append("<p class='muted'>Not recorded (no per-category metrics on the harmful benchmarks).</p>")

    # examples
    parts.append("<h2 id='examples'>Example transcripts</h2>")
    parts.append("<div class='warning'><strong>Content warning:</strong> this section contains descriptions of "
                 "harmful requests; responses are model outputs, shown unedited (truncated) and not endorsed.</div>")
    if report["examples"]:
        parts.append(f"<p class='note'>Up to six prompts, preferring ones the systems disagree on. Badge: the judge's "
                     f"label, green when it is what a safe and helpful model does (refuse a harmful request, comply "
                     f"with a benign one), red when not, amber for partial. Responses cut at {RESPONSE_CHARS} "
                     f"characters.</p>")
    else:
        parts.append("<p class='muted'>No records found under eval/.</p>")
    for i, ex in enumerate(report["examples"], 1):
        parts.append(_example_html(i, ex))

    # details
    parts.append("<h2 id='details'>Run details</h2>")
    parts.append(_details_html(d))
    parts.append("</body></html>")
    return "\n".join(parts)


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{_e(alt)}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _cat_cell(r: dict | None) -> str:
    return "—" if not r else f"{fmt(r['value'])} (n = {r['n']})"


def _example_html(i: int, ex: dict) -> str:
    tags = [ex["group"]] + [str(x) for x in (ex.get("category"), ex.get("attack")) if x]
    prompt, cut = _clip(ex["prompt"], PROMPT_CHARS)
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
        cls, text = _badge(r["judge"], ex.get("kind"), r.get("correct"))
        body, cut = _clip(r["response"], RESPONSE_CHARS)
        body_html = _e(body) if body.strip() else "<em class='empty'>(empty response)</em>"
        if cut:
            body_html += f"<span class='muted'> … [{cut} more characters]</span>"
        out.append(f"<div class='resp'><div class='who'>{_e(r['label'])}<span class='badge {cls}'>{_e(text)}</span>"
                   f"</div><div class='text'>{body_html}</div>")
        if r["reasoning"].strip():
            reasoning, rcut = _clip(r["reasoning"], REASONING_CHARS)
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
    out.append("<h3>Training</h3>")
    if d.get("training"):
        arms = list(d["training"])
        keys = list(dict.fromkeys(k for a in arms for k in d["training"][a]))
        out.append(_html_table(["statistic"] + [_e(a) for a in arms],
                               [[("", f"<code>{_e(k)}</code>")] + [("num", _e(_scalar(d["training"][a].get(k))))
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
    out.append(f"<pre>{_e(_config_text(d['config']))}</pre>" if d.get("config") is not None
               else "<p class='muted'>Not recorded.</p>")
    return "\n".join(out)


# markdown --------------------------------------------------------------------------------------------------------

def _md_cell(s) -> str:
    return html.escape(str(s), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(rows_i) + " |" for rows_i in ([_md_cell(c) for c in r] for r in rows)]
    return "\n".join(lines)


def _fence(text: str, info: str = "text") -> str:
    """A fenced block that the text cannot close: longer than any backtick run inside."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    f = "`" * max(3, longest + 1)
    return f"{f}{info}\n{text}\n{f}"


def render_markdown(report: dict, figure_files: dict[str, str] | None = None) -> str:
    figure_files = figure_files or {}
    h, d, v = report["headline"], report["details"], report["verdict"]
    md = [f"# {_md_cell(report['title'])}", ""]
    meta = [f"created {report['created']}" if report.get("created") else None,
            f"seed {d['seed']}" if d.get("seed") is not None else None,
            f"wall time {fmt_seconds(d['wall_seconds'])}" if d.get("wall_seconds") is not None else None]
    if any(meta):
        md += [f"*{_md_cell(' · '.join(m for m in meta if m))}*", ""]
    md += [_md_cell(report["summary"]), "", f"**{_md_cell(v['conclusion'])}** " + _md_cell(
        " ".join(v["comparisons"] + [v["note"]])), "", "## Headline", ""]
    if h["columns"]:
        md.append(_md_table(["System"] + [c["label"] for c in h["columns"]],
                            [[r["label"]] + [(f"**{s}**" if c["key"] in r["best"] else s)
                                             for c in h["columns"]
                                             for s in [fmt(r["values"][c["key"]],
                                                           3 if c["key"] == "reference_loglik" else 2)]]
                             for r in h["rows"]]))
        md += ["", f"Best value per column in bold. Refusal rates here count refusals and partial refusals (the "
               f"per-benchmark table gives both). Source: {h['source']}.", ""]
    else:
        md += ["Headline numbers not recorded.", ""]
    pb = report["per_benchmark"]
    md += ["## Per-benchmark results", "", "Rate with its 95% bootstrap interval.", ""]
    md.append(_md_table(["System"] + [f"{c['benchmark']}: {c['label']}" + (f" (n = {c['n']})" if c.get("n") else "")
                                      for c in pb["columns"]],
                        [[r["label"]] + [_ci_cell(cell, c.get("n")) for c, cell in zip(pb["columns"], r["cells"])]
                         for r in pb["rows"]]))
    md.append("")
    for t in report["per_attack"]:
        md += [f"### Refusal rate by jailbreak attack: {_md_cell(t['benchmark'])}", ""]
        md.append(_md_table(["System"] + t["attacks"],
                            [[r["label"]] + [_ci_cell(r["cells"][a], None) for a in t["attacks"]]
                             for r in t["rows"]]))
        md.append("")
    md += ["## Safety vs over-refusal", ""]
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
                            [[r["label"]] + [_cat_cell(r["rates"].get(c)) for c in cat["categories"]]
                             for r in cat["rows"]]))
        md.append("")
    else:
        md += ["Not recorded.", ""]
    md += ["## Example transcripts", "",
           "> **Content warning:** this section contains descriptions of harmful requests; responses are model "
           "outputs, shown unedited (truncated) and not endorsed.", ""]
    for i, ex in enumerate(report["examples"], 1):
        tags = " · ".join(_md_cell(t) for t in [ex["group"], ex.get("category"), ex.get("attack")] if t)
        prompt, cut = _clip(ex["prompt"], PROMPT_CHARS)
        md += [f"### {i}. {tags} ({_md_cell(ex['benchmark'])} · {_md_cell(ex['id'])})", "", "**Prompt**", "",
               _fence(prompt + (f" … [{cut} more characters]" if cut else "")), ""]
        for r in ex["responses"]:
            if r["missing"]:
                md += [f"**{_md_cell(r['label'])}**: no record for this prompt", ""]
                continue
            _, badge = _badge(r["judge"], ex.get("kind"), r.get("correct"))
            body, cut = _clip(r["response"], RESPONSE_CHARS)
            md += [f"**{_md_cell(r['label'])}**: `{_md_cell(badge)}`", "",
                   _fence((body if body.strip() else "(empty response)") + (f" … [{cut} more characters]"
                                                                           if cut else "")), ""]
    md += ["## Run details", ""]
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
    md += [_md_table(["key", "value"], [[k, _scalar(x)] for k, x in d["overlap"].items()]) if d.get("overlap")
           else "Not recorded.", ""]
    md += ["### Training", ""]
    if d.get("training"):
        arms = list(d["training"])
        keys = list(dict.fromkeys(k for a in arms for k in d["training"][a]))
        md.append(_md_table(["statistic"] + arms, [[k] + [_scalar(d["training"][a].get(k)) for a in arms]
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
    md += [_fence(_config_text(d["config"]), "yaml") if d.get("config") is not None else "Not recorded.", ""]
    return "\n".join(md)


# all together ----------------------------------------------------------------------------------------------------

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
