"""A finished (or partial) study beside the paper's own figures (issue 28's numbers): the paper's Table 3 (ASR, %,
lower is better, per benchmark x attack) and Table 4 (XSTest non-refusal, GSM8K, BBH, MMLU, %, higher is better),
each cell "this run [95% interval] (n) | the paper's LLaMA-3-8B-Instruct figure", and the wall time of every stage.

    python benchmarks/paper_study.py --run ~/cada-runs/paper [--out benchmarks/results/paper_study.md]

It reads the run's summary.json (written when the study ends) and stages.json (written as each stage ends), so on
a run still going it prints the stage times only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# arXiv 2601.08000v1, LLaMA-3-8B-Instruct (../shared/DESIGN.md, "What the paper reports"); % ; None = not reported
PAPER = {
    "base-none": {("strongreject", "none"): 0.6, ("strongreject", "PAIR"): 44.4, ("strongreject", "PAP"): 19.4,
                  ("advbench", "none"): 1.5, ("advbench", "PAIR"): 48.7, ("advbench", "PAP"): 20.7,
                  "xstest-safe": 88.0, "gsm8k": 71.7, "bbh": 49.1, "mmlu": 34.2},
    "sft-cr": {("strongreject", "none"): 0.3, ("strongreject", "PAIR"): 30.5, ("strongreject", "PAP"): 12.2,
               "xstest-safe": 85.2},
    "dpo-cr": {("strongreject", "none"): 0.3, ("strongreject", "PAIR"): 37.8, ("strongreject", "PAP"): 13.7,
               "xstest-safe": 88.8},
    "cada": {("strongreject", "none"): 0.2, ("strongreject", "PAIR"): 20.4, ("strongreject", "PAP"): 8.1,
             ("advbench", "none"): 1.3, ("advbench", "PAIR"): 28.0, ("advbench", "PAP"): 6.1,
             "xstest-safe": 89.1, "gsm8k": 71.8, "bbh": 49.1, "mmlu": 34.1},
    # inference time, no training: the codes or the cases in the prompt (PAIR on StrongREJECT)
    "base-codes": {("strongreject", "PAIR"): 78.3},
    "base-cases": {("strongreject", "PAIR"): 72.2},
}


def _attack(info: dict) -> str:
    attacks = info.get("attacks") or []
    return {"pair": "PAIR", "pap": "PAP"}.get(attacks[0], "wrappers") if attacks else "none"


def _pct(cell: dict | None) -> str:
    if not cell:
        return "-"
    lo, hi = cell["ci95"]
    return f"{100 * cell['value']:.1f} [{100 * lo:.0f}, {100 * hi:.0f}] ({cell.get('n')})"


def tables(summary: dict) -> str:
    from cada.report.build import paper_table

    t = paper_table(summary)
    sets = summary["benchmarks"]
    cols = [(i, c) for i, c in enumerate(t["columns"]) if c["metric"] in ("asr", "non_refusal_rate", "accuracy")]
    # strongreject-small is a subset of StrongREJECT: set beside the paper's StrongREJECT figure
    harmful = [(i, c, (c["benchmark"].removesuffix("-small"), _attack(sets[c["set"]]))) for i, c in cols
               if c["kind"] == "harmful"]
    other = [(i, c, c["set"]) for i, c in cols if c["kind"] != "harmful"]
    lines = []
    for title, group in (("Table 3: ASR %, lower is better (this run [95% CI] (n) | paper)", harmful),
                         ("Table 4: XSTest non-refusal and utility accuracy %, higher is better", other)):
        if not group:
            continue
        lines += [f"#### {title}", "", "| system | " + " | ".join(
            f"{k[0]} · {k[1]}" if isinstance(k, tuple) else k for _, _, k in group) + " |",
            "|---|" + "---|" * len(group)]
        for row in t["rows"]:
            paper = PAPER.get(row["system"], {})
            cells = [f"{_pct(row['cells'][i])} \\| {paper[k] if paper.get(k) is not None else '-'}"
                     for i, _, k in group]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def stage_times(stages: dict) -> str:
    total = sum(v.get("seconds", 0) for v in stages.values())
    lines = ["| stage | wall time (min) |", "|---|---|"]
    lines += [f"| {k} | {v.get('seconds', 0) / 60:.1f} |" for k, v in stages.items()]
    lines.append(f"| **total** | **{total / 60:.1f}** ({total / 3600:.1f} h) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paper_study.md")
    a = ap.parse_args()
    parts = [f"### {a.run.name}: the paper's tables beside its LLaMA-3-8B-Instruct figures", ""]
    if (a.run / "summary.json").is_file():
        parts.append(tables(json.loads((a.run / "summary.json").read_text())))
    else:
        parts.append("(the study has not finished: no summary.json yet)\n")
    if (a.run / "stages.json").is_file():
        parts += ["#### Stage wall times, 2 CPU cores", "", stage_times(json.loads((a.run / "stages.json").read_text()))]
    text = "\n".join(parts) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
