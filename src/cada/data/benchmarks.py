"""Evaluation benchmarks: the shipped sets by name, any user file, jailbreak attacks, and an eval set's items.

Shipped (see ``data/files/SOURCES.md``): ``xstest-safe`` (over-refusal), ``xstest-unsafe``, ``strongreject``,
``strongreject-small``, ``advbench`` (harmful), ``gsm8k`` (utility). The attacks wrap harmful items in the evaluation
jailbreak templates (:func:`cada.data.jailbreaks.eval_templates`, filled by the same
:func:`cada.data.jailbreaks.fill_template` as the training pools' templates) or the two static wrappers.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import zip_longest
from pathlib import Path

from cada.data.jailbreaks import PREFIX_INJECTION, REFUSAL_SUPPRESSION, eval_templates, fill_template
from cada.data.sources import FILES_DIR, csv_rows, jsonl_rows
from cada.errors import CadaError
from cada.records import EvalItem, read_rows


def _xstest(label: str) -> list[EvalItem]:
    kind = "benign" if label == "safe" else "harmful"
    return [EvalItem(id=f"xstest-{r['id']}", prompt=r["prompt"], kind=kind, category=r["type"])
            for r in csv_rows(FILES_DIR / "xstest/xstest_prompts.csv") if r["label"] == label]


def _strongreject(name: str) -> list[EvalItem]:
    return [EvalItem(id=f"{name}-{i}", prompt=r["forbidden_prompt"], kind="harmful", category=r["category"])
            for i, r in enumerate(csv_rows(FILES_DIR / f"strongreject/{name.replace('-', '_')}_dataset.csv"))]


def _advbench() -> list[EvalItem]:
    return [EvalItem(id=f"advbench-{i}", prompt=r["goal"], kind="harmful")
            for i, r in enumerate(csv_rows(FILES_DIR / "advbench/harmful_behaviors.csv"))]


def _gsm8k() -> list[EvalItem]:
    return [EvalItem(id=f"gsm8k-{i}", prompt=r["question"] + "\nGive the final answer as a number after '####'.",
                     kind="utility", reference=r["answer"])
            for i, r in enumerate(jsonl_rows(FILES_DIR / "gsm8k/test.jsonl"))]


BENCHMARKS: dict[str, Callable[[], list[EvalItem]]] = {
    "xstest-safe": lambda: _xstest("safe"),
    "xstest-unsafe": lambda: _xstest("unsafe"),
    "strongreject": lambda: _strongreject("strongreject"),
    "strongreject-small": lambda: _strongreject("strongreject-small"),
    "advbench": _advbench,
    "gsm8k": _gsm8k,
}


def load_benchmark(name: str) -> list[EvalItem]:
    if name not in BENCHMARKS:
        raise CadaError(f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)} or --dataset FILE")
    return BENCHMARKS[name]()


def load_file(path: str | Path, prompt_column: str, kind: str, *, category_column: str | None = None,
              reference_column: str | None = None) -> list[EvalItem]:
    """Any CSV / JSON (list of objects) / JSONL file as evaluation items."""
    if kind not in ("harmful", "benign", "utility"):
        raise CadaError(f"--kind {kind!r}: use harmful, benign or utility")
    rows = read_rows(path)
    items = []
    stem = Path(path).stem
    for i, r in enumerate(rows):
        if prompt_column not in r:
            raise CadaError(f"{path}: row {i + 1} has no column {prompt_column!r} (columns: {', '.join(r)})")
        value = r[prompt_column]
        if value is not None and not isinstance(value, str):  # a number, list or object is no request
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise CadaError(f"{path}: row {i + 1}: column {prompt_column!r} is a {_json_type(value)} ({shown}); a "
                            "prompt must be a string")
        prompt = (value or "").strip()
        if not prompt:  # an empty or blank prompt asks nothing: refused, as a missing one
            raise CadaError(f"{path}: row {i + 1}: column {prompt_column!r} is empty")
        items.append(EvalItem(id=f"{stem}-{i}", prompt=prompt, kind=kind,
                              category=str(r.get(category_column)) if category_column else None,
                              reference=str(r[reference_column]) if reference_column else None))
    return items


def _json_type(value) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}.get(type(value),
                                                                                            type(value).__name__)


# --- jailbreak attacks ----------------------------------------------------------------------------

def wrap(items: list[EvalItem], attacks: list[str], *, templates: int = 4,
         attack_file: str | Path | None = None, attack_column: str = "prompt") -> list[EvalItem]:
    """Jailbroken copies of harmful items, one per attack: ``inthewild`` (the first ``templates`` evaluation
    templates), ``prefix_injection``, ``refusal_suppression``; ``attack_file`` adds a CSV of ready-made attack
    prompts (PAIR or GCG artifacts) as the attack named after the file."""
    out: list[EvalItem] = []
    for it in items:
        for attack in attacks:
            if attack == "inthewild":
                for name, t in eval_templates(templates):
                    out.append(EvalItem(id=f"{it.id}@{name}", prompt=fill_template(t, it.prompt), kind=it.kind,
                                        category=it.category, attack=name, meta={"base_prompt": it.prompt}))
            elif attack in ("prefix_injection", "refusal_suppression"):
                t = PREFIX_INJECTION if attack == "prefix_injection" else REFUSAL_SUPPRESSION
                out.append(EvalItem(id=f"{it.id}@{attack}", prompt=t.format(prompt=it.prompt), kind=it.kind,
                                    category=it.category, attack=attack, meta={"base_prompt": it.prompt}))
            else:
                raise CadaError(f"unknown attack {attack!r}: use inthewild, prefix_injection or "
                                "refusal_suppression (or --attack-file)")
    if attack_file:
        for a in load_file(attack_file, attack_column, "harmful"):
            out.append(EvalItem(id=f"attack-{a.id}", prompt=a.prompt, kind="harmful",
                                attack=Path(attack_file).stem))
    return out


# --- an evaluation set's items --------------------------------------------------------------------

def eval_items(s) -> list[EvalItem]:
    """The items of one evaluation set, deterministic: with a ``limit``, the first prompts of a round-robin over
    the set's categories (a category-sorted benchmark such as StrongREJECT would otherwise give its first one or
    two categories only), then wrapped.

    ``s`` is an evaluation set's settings (``cada``'s ``EvalSet``, or anything with its attributes: name,
    benchmark, file, prompt_column, reference_column, kind, limit, attacks, templates, attack_file,
    attack_column).
    """
    if s.file:
        if not s.kind:
            raise CadaError(f"eval set {s.name!r}: a file needs a kind (harmful, benign or utility)")
        items = load_file(s.file, s.prompt_column, s.kind, reference_column=s.reference_column)
    else:
        items = load_benchmark(s.benchmark or s.name)
    if s.limit:
        items = spread_over_categories(items)[:s.limit]
    if s.attacks or s.attack_file:
        items = wrap(items, s.attacks, templates=s.templates, attack_file=s.attack_file,
                     attack_column=s.attack_column)
    return items


def spread_over_categories(items: list) -> list:
    """``items`` round-robin over their categories (the first of each category in order of first appearance, then
    the second of each, ...); file order within a category. A set without categories is unchanged."""
    groups: dict = {}
    for it in items:
        groups.setdefault(it.category, []).append(it)
    return [it for row in zip_longest(*groups.values()) for it in row if it is not None]
