"""The report's figures, as PNG bytes (matplotlib, Agg, no pyplot state): the Pareto plot of harmful compliance
against benign over-refusal and the per-category refusal bars. Both read only the report dict."""

from __future__ import annotations

import io


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
