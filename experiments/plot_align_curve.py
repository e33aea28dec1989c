"""How do the warm-up curves of ``align_curve.py`` compare? Plots every run in ``align_curve.json``'s ``runs``, one
panel per held-back set.

Result: ``experiments/results/align_curve.png``, from

    python experiments/plot_align_curve.py [--results experiments/results/align_curve.json]

Written beside ``--results``, with the suffix ``.png``.

Runs are grouped into panels by the ``pools`` value of their settings: each pool version has its own held-back
prompts (and base rates).
"""

from __future__ import annotations

import argparse
import textwrap
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "align_curve.json"))
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(Path(a.results).read_text())
    panels: dict[str, list] = {}
    for name, run in res["runs"].items():
        panels.setdefault(run["settings"].get("pools", "original pools"), []).append((name, run))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, (pools, runs) in zip(axes[0], panels.items()):
        for (name, run), ls in zip(runs, styles):
            base = run.get("base") or res["base"]
            xs = [0] + [p["examples_seen"] for p in run["curve"]]
            for label, color in (("harmful", "#c0392b"), ("benign", "#2471a3")):
                ys = [base[label]["keyword_refusal"]] + [p[label]["keyword_refusal"] for p in run["curve"]]
                ax.plot(xs, ys, ls, marker="o", color=color, label=f"{label}, {name}")
        ax.set(xlabel="warm-up examples seen", ylabel="keyword refusal (held-back pool)", ylim=(0, 1.02))
        ax.set_title(textwrap.fill(pools, 60), fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("SmolLM2-135M: SFT on grounded refusals + own answers")
    fig.tight_layout()
    out = Path(a.results).with_suffix(".png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
