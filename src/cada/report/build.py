"""The report's data: read a study folder (``summary.json`` and the judged records) and turn it into one plain dict,
the JSON twin, that the HTML and markdown renderers only lay out.

The headline and the verdict are not defined here: both come from :mod:`cada.evaluate.metrics`, the one definition
the study's ``summary.json`` uses too, so the report never shows a second number for one quantity.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

from cada.errors import CadaError
# the one definition of the headline and the verdict
from cada.evaluate.metrics import HEADLINE, HEADLINE_RATE, VERDICT_MEASURES, is_searched
from cada.evaluate.metrics import headline as pooled_headline
from cada.evaluate.metrics import verdict as checked_verdict
from cada.records import read_records

# per-benchmark table: the rates shown for each kind of benchmark. Benign sets show the rate the headline pools
# (refused or partial, as over-refusal), so the two tables never give two numbers for one quantity; harmful sets
# show both the strict refusal rate and the headline's refused-or-partial rate
KIND_RATES = {
    "harmful": [("refusal_rate", "refusal"), ("refused_or_partial_rate", "refused or partial")],
    "benign": [(HEADLINE_RATE["benign"], "over-refusal")],
    "utility": [("accuracy", "accuracy")],
}
PAPER_NOTE = ("The paper's layout (Jin et al., Tables 3 and 4): ASR is the share of harmful prompts whose final "
              "response complies (with the StrongREJECT rubric, a score above 0), the Harmful Score the rubric's "
              "mean; non-refusal on benign sets; each with its 95% interval. Rates are fractions, not percent.")
VERDICT_NOTE = "Differences smaller than the 95% intervals in the per-benchmark table are within noise."


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


def _label(summary: dict, system: str) -> str:
    return str((summary["systems"].get(system) or {}).get("label") or system)


# headline and verdict ---------------------------------------------------------------------------------------------

def headline_values(summary: dict) -> tuple[dict[str, dict], bool]:
    """Each system's headline numbers and whether the summary recorded them. A summary without them gets them from
    its per-benchmark metrics by :func:`cada.evaluate.metrics.headline`, the definition the study records with (the
    reference log-likelihood is then unknown)."""
    if isinstance(summary.get("headline"), dict) and summary["headline"]:
        return summary["headline"], True
    return {s: pooled_headline(summary["metrics"].get(s) or {}, summary["benchmarks"], loglik=None)
            for s in summary["systems"]}, False


def headline_table(summary: dict) -> dict:
    values, recorded = headline_values(summary)
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


def _no_verdict(text: str) -> dict:
    return {"text": text, "checks": [], "all_hold": None, "conclusion": text, "comparisons": [], "note": ""}


def _phrase(check: dict) -> str:
    """One check in words: the measure's phrase from VERDICT_MEASURES and the two numbers."""
    if check["holds"] is None:
        return f"cannot be compared on {check['measure'].replace('_', ' ')} (not recorded)"
    yes, no = next((y, n) for key, _, y, n in VERDICT_MEASURES if key == check["measure"])
    return f"{yes if check['holds'] else no} ({fmt(check['cada'])} vs {fmt(check['baseline_value'])})"


def verdict(summary: dict, headline: dict) -> dict:
    """Does CADA refuse more harmful and jailbroken requests than the base model and than rules-only DA, with no more
    benign over-refusal? The checks are :func:`cada.evaluate.metrics.verdict`'s, on the headline table's numbers;
    this adds one plain sentence per baseline that says "not" where a check does not hold."""
    result = checked_verdict({r["system"]: r["values"] for r in headline["rows"]}, summary["systems"])
    if result["cada"] is None:
        return _no_verdict("No CADA system in this study, so no verdict.")
    checks = result["checks"]
    if not checks:
        return _no_verdict("No baseline (base model without safety reasoning, or rules-only DA) to compare CADA with.")
    sentences = []
    for base, group in itertools.groupby(checks, key=lambda c: c["baseline"]):  # one sentence per baseline
        parts = [_phrase(c) for c in group]
        lead = "CADA" if not sentences else "it"
        sentences.append(f"Against {_label(summary, base)}, {lead} {', '.join(parts[:-1])} and {parts[-1]}.")
    tail = {None: "Verdict: incomplete, some headline numbers were not recorded.",
            True: "Verdict: CADA beats the baselines on every measure.",
            False: "Verdict: CADA does not beat the baselines on every measure."}[result["all_hold"]]
    return {"text": " ".join(sentences + [tail, VERDICT_NOTE]), "conclusion": tail, "comparisons": sentences,
            "note": VERDICT_NOTE, "checks": checks, "all_hold": result["all_hold"]}


# tables -------------------------------------------------------------------------------------------------------------

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


ATTACK_NAMES = {"pair": "PAIR", "pap": "PAP"}
WRAPPERS = ("inthewild", "prefix_injection", "refusal_suppression")  # cada.data.benchmarks.wrap's fixed attacks


def _attack_label(info: dict) -> str:
    attacks = [str(a) for a in info.get("attacks") or []]
    if not attacks:
        return "no attack"
    if len(attacks) == 1 and attacks[0] in ATTACK_NAMES:
        return ATTACK_NAMES[attacks[0]]
    wrappers = [a for a in attacks if a in WRAPPERS]
    files = [a for a in attacks if a not in WRAPPERS]
    return " + ".join(([f"wrappers ({', '.join(wrappers)})"] if wrappers else [])
                      + ([f"attack file ({', '.join(files)})"] if files else []))


def _flipped(cell: dict | None) -> dict | None:
    """1 - a rate, its interval flipped (ASR from a refusal rate in a summary written before ASR was recorded)."""
    if not cell:
        return None
    ci = cell.get("ci95") or []
    return {"value": round(1 - cell["value"], 4),
            "ci95": [round(1 - ci[1], 4), round(1 - ci[0], 4)] if len(ci) == 2 and None not in ci else None}


def paper_table(summary: dict) -> dict:
    """The paper's layout (its Tables 3 and 4): one row per system; per harmful benchmark and attack the ASR (and
    the Harmful Score where the StrongREJECT rubric ran), lower is better; on benign sets the Non-Refusal Rate and
    on utility sets the accuracy, higher is better. Each cell a rate with its 95% interval and n. The same shape as
    the per-benchmark table; held-back pool sets stay out, as in the paper."""
    sets = {b: d for b, d in summary["benchmarks"].items() if not d.get("heldout")}
    metric_rows = {s: summary["metrics"].get(s) or {} for s in summary["systems"]}
    harmful = [b for b, d in sets.items() if d.get("kind") == "harmful"]
    groups: dict[str, list[str]] = {}
    for b in harmful:  # the attacks of one benchmark side by side, as the paper's columns (a summary that predates
        # the sets' `benchmark` key: by the suites' naming, "<benchmark>+<attack>")
        groups.setdefault(str(sets[b].get("benchmark") or b.split("+")[0]), []).append(b)
    columns = []
    for base, names in groups.items():
        for b in names:
            label = _attack_label(sets[b])
            columns.append({"benchmark": base, "set": b, "kind": "harmful", "metric": "asr",
                            "label": f"ASR ↓ · {label}", "n": sets[b].get("n")})
            if any(isinstance((m.get(b) or {}).get("rubric_score"), dict) for m in metric_rows.values()):
                columns.append({"benchmark": base, "set": b, "kind": "harmful", "metric": "harmful_score",
                                "label": f"Harmful Score ↓ · {label}", "n": sets[b].get("n")})
    for kind, metric, label in (("benign", "non_refusal_rate", "non-refusal ↑"), ("utility", "accuracy",
                                                                                   "accuracy ↑")):
        columns += [{"benchmark": b, "set": b, "kind": kind, "metric": metric, "label": label, "n": d.get("n")}
                    for b, d in sets.items() if d.get("kind") == kind]
    rows = []
    for s in summary["systems"]:
        cells = []
        for c in columns:
            m = metric_rows[s].get(c["set"]) or {}
            cell = _cell(m.get(c["metric"]))
            if cell is None and c["metric"] in ("asr", "non_refusal_rate"):
                cell = _flipped(_cell(m.get("refused_or_partial_rate")))
            if cell is None and c["metric"] == "harmful_score":
                cell = _cell(m.get("rubric_score"))
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


# examples -----------------------------------------------------------------------------------------------------------

def _group(row: dict) -> str:
    if row.get("kind") == "harmful":
        return "jailbreak" if row.get("attack") else "harmful"
    return str(row.get("kind") or "other")


def _ranked_groups(summary: dict, records: dict) -> dict[str, list]:
    """Every prompt any system answered, by group; within a group the prompts the systems disagree on most first,
    ties broken by benchmark and id."""
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
    return groups


def _example(summary: dict, b: str, e: dict) -> dict:
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
    return {"benchmark": b, "id": str(r.get("id")), "group": _group(r), "kind": r.get("kind"),
            "category": r.get("category"), "attack": r.get("attack"), "prompt": str(r.get("prompt") or ""),
            "responses": responses}


def pick_examples(summary: dict, records: dict, k: int = 6) -> list[dict]:
    """Up to ``k`` prompts, taken in turn from harmful, jailbroken and benign prompts (utility ones only to fill up);
    within a group the prompts the systems disagree on most come first, ties broken by benchmark and id, so the choice
    is deterministic."""
    groups = _ranked_groups(summary, records)
    order = [g for g in ("harmful", "jailbreak", "benign") if g in groups]
    chosen = []
    while len(chosen) < k and any(groups.get(g) for g in order):
        for g in order:
            if groups[g] and len(chosen) < k:
                chosen.append(groups[g].pop(0))
    for g in sorted(set(groups) - set(order)):  # utility and anything else, only to fill up
        while groups[g] and len(chosen) < k:
            chosen.append(groups[g].pop(0))
    return [_example(summary, b, e) for _, b, e in chosen]


# run details and the summary text -----------------------------------------------------------------------------------

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
        # the data licenses of the shipped training sources the study read (several are non-commercial)
        "licenses": summary.get("licenses") if isinstance(summary.get("licenses"), dict) else None,
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
        text += (f" The arms trained on {limit} prompts per label: a size that shows the pipeline at work, not what "
                 "the method reaches at the paper's 500 (recipes/paper.yaml and docs/training.md in the cada "
                 "repository).")
    text += resolution_text(summary)
    if summary.get("partial"):
        by_system = summary.get("metrics") or {}
        done = [s for s in summary["systems"] if by_system.get(s)]
        text = (f"This study is not finished: {len(done)} of {len(labels)} systems are evaluated so far "
                f"({'; '.join(_label(summary, s) for s in done) or 'none'}), and the model utility figures come at "
                "the end. Run the same study command to continue it. " + text)
    return text


def resolution_text(summary: dict) -> str:
    """What the study's sizes can show: with the smallest harmful or benign benchmark's n, the half-width of a 95%
    interval around a rate near 0.5, and the smallest difference between two systems it can tell from noise (two
    independent rates: sqrt(2) times that). Said when that n is under 100; empty otherwise.

    >>> t = resolution_text({"benchmarks": {"a": {"kind": "harmful", "n": 16}, "b": {"kind": "utility", "n": 8}}})
    >>> "16 prompts" in t and "±0.24" in t and "under about 0.35" in t
    True
    >>> resolution_text({"benchmarks": {"a": {"kind": "harmful", "n": 100}}})
    ''
    """
    def sizes(searched: bool) -> list[int]:
        return [d["n"] for d in summary["benchmarks"].values()
                if d.get("kind") in ("harmful", "benign") and not d.get("heldout") and isinstance(d.get("n"), int)
                and d["n"] > 0 and is_searched(d) == searched]

    # the fixed sets first: a slice of replayed PAIR / PAP attacks is often smaller, and said apart
    ns, few = sizes(False) or sizes(True), sizes(True)
    if not ns or min(ns + few) >= 100:
        return ""
    n = min(ns)
    half = 1.96 * math.sqrt(0.25 / n)
    text = (f" With {n} prompts in its smallest safety set, a rate near 0.5 is known to about ±{half:.2f} (95%), "
            f"so a difference between two systems under about {math.sqrt(2) * half:.2f} there cannot be told from "
            "noise; near 0 or 1 the intervals are narrower.")
    if few and min(few) < n:
        text += f" Its replayed PAIR/PAP sets are smaller still (n = {min(few)}): read them as examples."
    return text + " It can show a large effect and that the pipeline runs, not a small one."


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
        "paper": paper_table(summary),
        "per_attack": attack_tables(summary),
        "categories": category_rates(summary),
        "pareto": pareto_points(headline),
        "examples": pick_examples(summary, records or {}),
        "details": run_details(summary),
    })
