"""The shipped data files, and the training sources read from them.

Sources (shipped under ``cada/data/files``; see ``files/SOURCES.md``):

=====================  =======  ==================================================================================
source                 label    how
=====================  =======  ==================================================================================
``do_not_answer``      harmful  all 939 Do-Not-Answer requests (label from the dataset)
``hh_rlhf``            harmful  first human turn of each HH-RLHF harmless-base dialogue, deduplicated, kept when
                                :func:`cada.data.pools.auto_label` calls it harmful (``label_source="auto"``); the
                                others are dropped
``ifeval``             benign   all 541 IFEval prompts, category ``none``
``coconot_contrast``   benign   the 379 CoCoNot contrast prompts (benign look-alikes)
``coconot_pref``       benign   the 919 distinct prompts of the CoCoNot preference pairs (more benign look-alikes:
                                "How can I protect my computer from being hacked?"); their responses are not used
=====================  =======  ==================================================================================

:func:`raw_sources` reads them; :mod:`cada.data.pools` labels, categorises and checks them.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cada.data.decontam import normalize
from cada.errors import CadaError

FILES_DIR = Path(__file__).parent / "files"


def data_file(*parts: str) -> Path:
    """A shipped data file (or folder), e.g. ``data_file("xstest", "xstest_prompts.csv")``."""
    return FILES_DIR.joinpath(*parts)


def required_file(data_dir: str | Path | None, *parts: str) -> Path:
    """A file of ``data_dir`` (laid out like the shipped files; default: the shipped ones), which must exist."""
    path = (Path(data_dir) if data_dir is not None else FILES_DIR).joinpath(*parts)
    if not path.exists():
        raise CadaError(f"{path}: data file not found (data_dir must be laid out like {FILES_DIR})")
    return path


# --- small readers -------------------------------------------------------------------------------

def csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file with a header row."""
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def csv_column(path: Path, column: str) -> list[str]:
    """One column of a CSV file with a header row."""
    return [row[column] for row in csv_rows(path)]


def jsonl_rows(path: Path) -> list[dict]:
    """The objects of a JSONL file (gzipped when its name ends in ``.gz``); blank lines skipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def jsonl_column(path: Path, key: str) -> list[str]:
    """One field of every object of a JSONL file (see :func:`jsonl_rows`)."""
    return [row[key] for row in jsonl_rows(path)]


def unique_texts(texts: Iterable[str]) -> list[str]:
    """Texts in first-seen order, without repeats of the same normalised text.

    >>> unique_texts(["Hi there!", " hi, there", "Bye."])
    ['Hi there!', 'Bye.']
    """
    seen: dict[str, str] = {}
    for t in texts:
        seen.setdefault(normalize(t), t.strip())
    return [t for n, t in seen.items() if n]


# --- the training sources ------------------------------------------------------------------------

@dataclass
class RawPrompt:
    """A source's request as read, before labelling and categorising."""

    id: str
    text: str
    source: str
    label: str | None  # None: to be labelled automatically


def _first_human_turn(transcript: str) -> str:
    m = re.match(r"\s*Human:\s*(.*?)\n\nAssistant:", transcript, re.DOTALL)
    return m.group(1).strip() if m else ""


def raw_sources(data_dir: str | Path | None = None) -> list[RawPrompt]:
    """Every request of the five training sources, in source order, with ids ``dna-0000``, ``coconot-0000``,
    ``ccpref-0000``, ``ifeval-0000`` and ``hh-0000``."""
    dna_files = sorted(required_file(data_dir, "do_not_answer").glob("*.jsonl"))
    dna = [p for f in dna_files for p in jsonl_column(f, "prompt")]
    ccn = jsonl_column(required_file(data_dir, "coconot", "coconot_contrast_eval.jsonl"), "prompt")
    pref = unique_texts(jsonl_column(required_file(data_dir, "coconot", "coconot_pref.jsonl"), "prompt"))
    ife = jsonl_column(required_file(data_dir, "ifeval", "input_data.jsonl"), "prompt")
    hh_path = required_file(data_dir, "hh_rlhf", "harmless-base_test.jsonl.gz")
    hh = unique_texts(_first_human_turn(t) for t in jsonl_column(hh_path, "chosen"))
    groups = [("dna", "do_not_answer", "harmful", dna), ("coconot", "coconot_contrast", "benign", ccn),
              ("ccpref", "coconot_pref", "benign", pref), ("ifeval", "ifeval", "benign", ife),
              ("hh", "hh_rlhf", None, hh)]
    return [RawPrompt(f"{prefix}-{i:04d}", text.strip(), source, label)
            for prefix, source, label, texts in groups for i, text in enumerate(texts)]
