"""Evaluation benchmarks: the shipped sets by name, any user file, jailbreak attacks, and an eval set's items.

Shipped (see ``data/files/SOURCES.md``): ``xstest-safe`` (over-refusal), ``xstest-unsafe``, ``strongreject``,
``strongreject-small``, ``advbench`` (harmful), ``gsm8k``, ``bbh``, ``mmlu`` (utility; BBH and MMLU are small fixed
subsets, ``bbh-full`` and ``mmlu-full`` read the whole sets from the folders ``$CADA_BBH_DIR`` and
``$CADA_MMLU_DIR`` name). The attacks wrap harmful items in the evaluation
jailbreak templates (:func:`cada.data.jailbreaks.eval_templates`, filled by the same
:func:`cada.data.jailbreaks.fill_template` as the training pools' templates) or the two static wrappers.
"""

from __future__ import annotations

import csv
import json
import os
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


# --- utility sets: BBH (0-shot, generated, exact match) and MMLU (5-shot, log-likelihood) -------------------

#: the folders of the full sets, for the benchmarks bbh-full and mmlu-full (the shipped bbh and mmlu are subsets)
BBH_DIR_ENV, MMLU_DIR_ENV = "CADA_BBH_DIR", "CADA_MMLU_DIR"
_BBH_LAYOUT = "a folder of BIG-Bench-Hard's task files (<task>.json, directly or in tasks/)"
_MMLU_LAYOUT = "a folder holding MMLU's dev/ and test/ CSVs (<subject>_dev.csv, <subject>_test.csv)"


def full_set_dir(env: str, name: str, layout: str) -> Path:
    """The folder ``$env`` names, which must exist: a missing one is a one-line error saying what to set."""
    value = os.environ.get(env, "").strip()
    if not value:
        raise CadaError(f"benchmark {name} reads the full set from ${env}: set it to {layout}")
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise CadaError(f"${env}={value}: no such folder (benchmark {name} needs {layout})")
    return folder


def bbh_items(folder: Path) -> list[EvalItem]:
    """Every example of every BBH task file of ``folder`` (or ``folder/tasks``), task by task in name order, as
    0-shot prompts (:func:`cada.evaluate.utility.bbh_prompt`) matched exactly against the target."""
    from cada.evaluate.utility import bbh_prompt

    tasks = folder / "tasks" if (folder / "tasks").is_dir() else folder
    files = sorted(tasks.glob("*.json"))
    if not files:
        raise CadaError(f"{tasks}: no BBH task files (<task>.json)")
    items = []
    for f in files:
        try:
            examples = [(ex["input"], ex["target"]) for ex in json.loads(f.read_text(encoding="utf-8"))["examples"]]
        except (ValueError, KeyError, TypeError):
            raise CadaError(f'{f}: not a BBH task file ({{"examples": [{{"input": ..., "target": ...}}, ...]}})'
                            ) from None
        items += [EvalItem(id=f"bbh-{f.stem}-{i}", prompt=bbh_prompt(q), kind="utility", category=f.stem,
                           reference=target, meta={"scorer": "bbh"}) for i, (q, target) in enumerate(examples)]
    return items


def mmlu_rows(folder: Path, split: str) -> list[dict]:
    """The rows of ``folder/<split>/<subject>_<split>.csv`` (no header: question, four choices, answer letter),
    subject by subject in name order, as ``{"subject", "question", "choices", "answer"}``."""
    from cada.evaluate.utility import MMLU_LETTERS

    files = sorted((folder / split).glob(f"*_{split}.csv"))
    if not files:
        raise CadaError(f"{folder / split}: no MMLU {split} files (<subject>_{split}.csv)")
    rows = []
    for f in files:
        subject = f.name.removesuffix(f"_{split}.csv")
        with f.open(newline="", encoding="utf-8") as fh:
            for n, r in enumerate(csv.reader(fh), 1):
                if len(r) != 6 or r[5] not in MMLU_LETTERS:
                    raise CadaError(f"{f}: row {n} is not an MMLU row (question, four choices, answer A-D)")
                rows.append({"subject": subject, "question": r[0], "choices": r[1:5], "answer": r[5]})
    return rows


def mmlu_items(folder: Path) -> list[EvalItem]:
    """Every MMLU test question of ``folder`` as lm-evaluation-harness's 5-shot prompt, the shots the first five
    dev rows of its subject (:func:`cada.evaluate.utility.mmlu_prompt`); scored by log-likelihood, not generated."""
    from cada.evaluate.utility import mmlu_prompt

    dev: dict[str, list[dict]] = {}
    for r in mmlu_rows(folder, "dev"):
        dev.setdefault(r["subject"], []).append(r)
    items, seen = [], {}
    for r in mmlu_rows(folder, "test"):
        i = seen[r["subject"]] = seen.get(r["subject"], -1) + 1
        items.append(EvalItem(id=f"mmlu-{r['subject']}-{i}", prompt=mmlu_prompt(r, dev.get(r["subject"], [])),
                              kind="utility", category=r["subject"], reference=r["answer"], meta={"scorer": "mmlu"}))
    return items


BENCHMARKS: dict[str, Callable[[], list[EvalItem]]] = {
    "xstest-safe": lambda: _xstest("safe"),
    "xstest-unsafe": lambda: _xstest("unsafe"),
    "strongreject": lambda: _strongreject("strongreject"),
    "strongreject-small": lambda: _strongreject("strongreject-small"),
    "advbench": _advbench,
    "gsm8k": _gsm8k,
    "bbh": lambda: bbh_items(FILES_DIR / "bbh"),
    "mmlu": lambda: mmlu_items(FILES_DIR / "mmlu"),
    "bbh-full": lambda: bbh_items(full_set_dir(BBH_DIR_ENV, "bbh-full", _BBH_LAYOUT)),
    "mmlu-full": lambda: mmlu_items(full_set_dir(MMLU_DIR_ENV, "mmlu-full", _MMLU_LAYOUT)),
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
        if category_column and category_column not in r:
            raise CadaError(f"{path}: row {i + 1} has no column {category_column!r} (columns: {', '.join(r)})")
        prompt = (value or "").strip()
        if not prompt:  # an empty or blank prompt asks nothing: refused, as a missing one
            raise CadaError(f"{path}: row {i + 1}: column {prompt_column!r} is empty")
        items.append(EvalItem(id=f"{stem}-{i}", prompt=prompt, kind=kind,
                              category=str(r[category_column]) if category_column and r[category_column] not in
                              (None, "") else None,
                              reference=str(r[reference_column]) if reference_column else None))
    return items


def _json_type(value) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}.get(type(value),
                                                                                            type(value).__name__)


# --- jailbreak attacks ----------------------------------------------------------------------------

def attack_file_name(attack_file: str | Path, rows: list[dict] | None = None) -> str:
    """The attack an attack file's rows are named after: the one ``cada attack`` wrote in its ``source`` column
    (pair, pap), else the file's name without its suffix."""
    if rows is None:
        try:
            rows = read_rows(attack_file)
        except CadaError:
            rows = []
    name = str(rows[0].get("source") or "") if rows else ""
    return name if name and all(r.get("source") == name for r in rows) else Path(attack_file).stem


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
            elif attack in ("pair", "pap"):
                raise CadaError(f"attack {attack!r} is searched by an attacker LLM: run `cada attack {attack}` "
                                "and replay its attacks.csv with --attack-file (a study runs it for you)")
            else:
                raise CadaError(f"unknown attack {attack!r}: use inthewild, prefix_injection or "
                                "refusal_suppression (or --attack-file)")
    if attack_file:
        # an attack file `cada attack` exported names each goal's category: kept, for the per-category rates
        rows = read_rows(attack_file)
        category = "category" if rows and "category" in rows[0] else None
        name = attack_file_name(attack_file, rows)
        for a in load_file(attack_file, attack_column, "harmful", category_column=category):
            out.append(EvalItem(id=f"attack-{a.id}", prompt=a.prompt, kind="harmful", category=a.category or None,
                                attack=name))
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
        items = load_file(s.file, s.prompt_column, s.kind, reference_column=s.reference_column,
                          category_column=getattr(s, "category_column", None))
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
