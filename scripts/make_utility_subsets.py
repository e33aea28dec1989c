#!/usr/bin/env python
"""Rebuild the shipped BBH and MMLU subsets (``src/cada/data/files/{bbh,mmlu}``) from the full public copies.

    python scripts/make_utility_subsets.py [--source ../shared/data] [--bbh-per-task 10] [--mmlu-per-subject 5]

Deterministic: the first ``--bbh-per-task`` examples of every BBH task file and the first ``--mmlu-per-subject``
rows of every MMLU test file, in file order, plus every MMLU dev file whole (the 5-shot exemplars). Nothing is
sampled, so the same source gives the same bytes. Rows are copied unchanged: a BBH subset is serialised the way
upstream serialises its task files (``json.dumps`` defaults, canary kept), an MMLU subset keeps the upstream bytes
of the rows it keeps. The LICENSE files are copied beside them; each folder's SOURCE.md is written by hand and
records the counts this script prints.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT / "src" / "cada" / "data" / "files"


def csv_records(raw: str) -> list[str]:
    """The records of a CSV text, each with its own bytes and line end (a quoted field may hold a newline)."""
    out, start, quoted = [], 0, False
    for i, ch in enumerate(raw):
        if ch == '"':
            quoted = not quoted  # an escaped quote ("") toggles twice
        elif ch == "\n" and not quoted:
            out.append(raw[start:i + 1])
            start = i + 1
    if start < len(raw):
        out.append(raw[start:])
    return out


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:  # line ends as they are
        return f.read()


def _fresh(folder: Path) -> None:
    """Empty a generated folder, so a subject or task gone from the source does not linger."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def make_bbh(source: Path, target: Path, per_task: int) -> dict[str, int]:
    tasks = sorted((source / "tasks").glob("*.json"))
    if not tasks:
        sys.exit(f"{source / 'tasks'}: no BBH task files")
    _fresh(target / "tasks")
    counts = {}
    for f in tasks:
        data = json.loads(f.read_text(encoding="utf-8"))
        kept = data["examples"][:per_task]
        # the canary stays: it marks the file as benchmark data that must not reach a training corpus
        (target / "tasks" / f.name).write_text(json.dumps({"canary": data["canary"], "examples": kept}),
                                               encoding="utf-8")
        counts[f.stem] = len(kept)
    shutil.copyfile(source / "LICENSE", target / "LICENSE")
    return counts


def make_mmlu(source: Path, target: Path, per_subject: int) -> tuple[dict[str, int], dict[str, int]]:
    tests = sorted((source / "test").glob("*_test.csv"))
    devs = sorted((source / "dev").glob("*_dev.csv"))
    if not tests or not devs:
        sys.exit(f"{source}: no MMLU test/ or dev/ CSV files")
    _fresh(target / "test")
    _fresh(target / "dev")
    test_counts, dev_counts = {}, {}
    for f in tests:
        raw = _read(f)
        kept = "".join(csv_records(raw)[:per_subject])
        rows = list(csv.reader(io.StringIO(kept)))
        if rows != list(csv.reader(io.StringIO(raw)))[:per_subject]:  # the record split must agree with csv
            sys.exit(f"{f}: the first {per_subject} records do not split cleanly")
        (target / "test" / f.name).write_text(kept, encoding="utf-8", newline="")
        test_counts[f.name.removesuffix("_test.csv")] = len(rows)
    for f in devs:
        shutil.copyfile(f, target / "dev" / f.name)
        dev_counts[f.name.removesuffix("_dev.csv")] = len(list(csv.reader(io.StringIO(_read(f)))))
    shutil.copyfile(source / "LICENSE", target / "LICENSE")
    return test_counts, dev_counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data",
                    help="folder holding bbh/ (tasks/, LICENSE) and mmlu/ (test/, dev/, LICENSE)")
    ap.add_argument("--bbh-per-task", type=int, default=10)
    ap.add_argument("--mmlu-per-subject", type=int, default=5)
    args = ap.parse_args()
    bbh = make_bbh(args.source / "bbh", FILES / "bbh", args.bbh_per_task)
    test, dev = make_mmlu(args.source / "mmlu", FILES / "mmlu", args.mmlu_per_subject)
    print(f"bbh: {len(bbh)} tasks, {sum(bbh.values())} examples")
    print(f"mmlu: {len(test)} subjects, test {sum(test.values())} rows, dev {sum(dev.values())} rows")
    missing = sorted(set(test) - set(dev))
    if missing:
        sys.exit(f"mmlu: no dev rows for {', '.join(missing)}")


if __name__ == "__main__":
    main()
