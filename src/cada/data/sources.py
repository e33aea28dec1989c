"""The shipped data files, and the training sources read from them.

Sources (shipped under ``cada/data/files``; see ``files/SOURCES.md``), in the order they are read; ``pool.sources``
names some (default: the five marked *), :data:`SOURCES` holds each one's label, license, id prefix, reader and
role:

========================  =======  ============  ===============================================================
source                    label    license       how
========================  =======  ============  ===============================================================
``do_not_answer`` *       harmful  Apache-2.0    all 939 Do-Not-Answer requests (label from the dataset)
``coconot_contrast`` *    benign   MIT           the 379 CoCoNot contrast prompts (benign look-alikes)
``coconot_pref`` *        benign   MIT           the 919 distinct prompts of the CoCoNot preference pairs (more
                                                 benign look-alikes: "How can I protect my computer from being
                                                 hacked?"); their responses are not used
``ifeval`` *              benign   Apache-2.0    all 541 IFEval prompts, category ``none``
``beavertails``           harmful  CC-BY-NC-4.0  the 1,406 of the 2,494 BeaverTails red-team questions whose
                                                 answer BeaverTails judged harmful (``response_label``); see below
``catqa``                 harmful  Apache-2.0    all 542 CatQA questions
``harmfulqa``             harmful  Apache-2.0    all 1,929 HarmfulQA questions (harm posed as academic topics)
``safety_tuned_llamas``   harmful  CC-BY-NC-4.0  all 2,465 Safety-Tuned LLaMAs instructions (their written safe
                                                 responses are not used: a pool prompt has no field for them)
``or_bench_toxic``        harmful  CC-BY-4.0     all 639 OR-Bench toxic prompts; role ``validation``
``or_bench_80k``          benign   CC-BY-4.0     all 966 OR-Bench-80K look-alikes (the rows also in
                                                 or-bench-hard-1k were removed upstream); role ``validation``
``alpaca``                benign   CC-BY-NC-4.0  the first 3,000 of 18,778 Alpaca no-input instructions (plain)
``hh_rlhf`` *             harmful  MIT           first human turn of each HH-RLHF harmless-base dialogue,
                                                 deduplicated, kept when :func:`cada.data.pools.auto_label`
                                                 calls it harmful (``label_source="auto"``); the others dropped
========================  =======  ============  ===============================================================

Ids are ``<prefix>-0000`` in read order (``dna``, ``coconot``, ``ccpref``, ``ifeval``, ``bt``, ``catqa``, ``hqa``,
``stl``, ``ortox``, ``or80k``, ``alpaca``, ``hh``); a request several sources hold is kept as the first one's, so
the dataset-labelled sources come before the automatically labelled one. The ``validation`` role: the look-alike
validation prompts of ``pool.validation_per_label`` are drawn from these two sources (never trained on, see
:func:`cada.data.pools.validation_pool`); named in ``pool.sources``, their other prompts train. Several licenses
are non-commercial (CC-BY-NC-4.0): a run's ``pool/report.json`` lists the license of every source it read.

**BeaverTails' label.** Its rows are red-team questions ("harmful_leaning"), and its only label, ``response_label``,
judged an answer, not the question. Three ways were measured on 100 questions drawn at random (seed 1) from the
2,101 left after repeats of HH-RLHF are dropped, each read by hand as harmful / borderline / benign: all of them
are 49 / 30 / 21; the ones :func:`cada.data.pools.auto_label` (the HH-RLHF rule) calls harmful, 86 kept, are
44 / 26 / 16 (19% benign); the ones BeaverTails judged the answer harmful, 63 kept, are 41 / 14 / 8 (13% benign,
8 of the 49 harmful ones lost). An answer judged harmful shows the question drew harm out, so that is the filter,
labelled ``dataset``; the other rows are dropped, not used as benign (many still ask for harm). The vote is no
better than taking every row: it calls 85% of the questions with a safe answer harmful and 89% of the others.

:func:`raw_sources` reads them; :mod:`cada.data.pools` labels, categorises and checks them.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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


def _do_not_answer(data_dir: str | Path | None) -> list[str]:
    files = sorted(required_file(data_dir, "do_not_answer").glob("*.jsonl"))
    return [p for f in files for p in jsonl_column(f, "prompt")]


def _coconot_contrast(data_dir: str | Path | None) -> list[str]:
    return jsonl_column(required_file(data_dir, "coconot", "coconot_contrast_eval.jsonl"), "prompt")


def _coconot_pref(data_dir: str | Path | None) -> list[str]:
    return unique_texts(jsonl_column(required_file(data_dir, "coconot", "coconot_pref.jsonl"), "prompt"))


def _ifeval(data_dir: str | Path | None) -> list[str]:
    return jsonl_column(required_file(data_dir, "ifeval", "input_data.jsonl"), "prompt")


def _hh_rlhf(data_dir: str | Path | None) -> list[str]:
    path = required_file(data_dir, "hh_rlhf", "harmless-base_test.jsonl.gz")
    return unique_texts(_first_human_turn(t) for t in jsonl_column(path, "chosen"))


def _prompts_of(folder: str, file: str | None = None) -> Callable[[str | Path | None], list[str]]:
    """A reader of the ``prompt`` field of ``folder/file`` (default ``folder/<folder>.jsonl``), every row in file
    order (repeats are dropped by the pools, the first one kept)."""
    def read(data_dir: str | Path | None) -> list[str]:
        return jsonl_column(required_file(data_dir, folder, file or f"{folder}.jsonl"), "prompt")
    return read


def _beavertails(data_dir: str | Path | None) -> list[str]:
    """The BeaverTails questions whose answer BeaverTails judged harmful (``response_label``), in file order."""
    path = required_file(data_dir, "beavertails", "beavertails.jsonl")
    return [r["prompt"] for r in jsonl_rows(path) if r.get("response_label") == "harmful"]


@dataclass(frozen=True)
class SourceInfo:
    """One shipped training source: its name (the ``source`` of its pool prompts and a ``pool.sources`` entry), its
    label (None: labelled by :func:`cada.data.pools.auto_label`, and kept only when called harmful), its data
    license, the prefix of its prompt ids (``<prefix>-0000`` in read order), its reader (``data_dir`` -> request
    texts) and its role: ``train``, or ``validation`` (a source the look-alike validation prompts of
    ``pool.validation_per_label`` are drawn from; when named in ``pool.sources``, its other prompts train)."""

    name: str
    label: str | None
    license: str
    prefix: str
    reader: Callable[[str | Path | None], list[str]] = field(repr=False, compare=False)
    role: Literal["train", "validation"] = "train"


#: every shipped training source, in the order they are read: a request that several sources hold is kept once, as
#: the first one's, so the dataset-labelled sources come before the automatically labelled ones (the first five
#: are in the order of the pools before the table grew)
SOURCES: dict[str, SourceInfo] = {s.name: s for s in (
    SourceInfo("do_not_answer", "harmful", "Apache-2.0", "dna", _do_not_answer),
    SourceInfo("coconot_contrast", "benign", "MIT", "coconot", _coconot_contrast),
    SourceInfo("coconot_pref", "benign", "MIT", "ccpref", _coconot_pref),
    SourceInfo("ifeval", "benign", "Apache-2.0", "ifeval", _ifeval),
    SourceInfo("beavertails", "harmful", "CC-BY-NC-4.0", "bt", _beavertails),
    SourceInfo("catqa", "harmful", "Apache-2.0", "catqa", _prompts_of("catqa")),
    SourceInfo("harmfulqa", "harmful", "Apache-2.0", "hqa", _prompts_of("harmfulqa")),
    SourceInfo("safety_tuned_llamas", "harmful", "CC-BY-NC-4.0", "stl", _prompts_of("safety_tuned_llamas")),
    SourceInfo("or_bench_toxic", "harmful", "CC-BY-4.0", "ortox", _prompts_of("or_bench_toxic"),
               role="validation"),
    SourceInfo("or_bench_80k", "benign", "CC-BY-4.0", "or80k", _prompts_of("or_bench_80k"), role="validation"),
    SourceInfo("alpaca", "benign", "CC-BY-NC-4.0", "alpaca", _prompts_of("alpaca")),
    SourceInfo("hh_rlhf", None, "MIT", "hh", _hh_rlhf),
)}
#: what ``pool.sources: null`` reads: the five sources of the pools before the table grew
DEFAULT_SOURCES = ("do_not_answer", "coconot_contrast", "coconot_pref", "ifeval", "hh_rlhf")
#: the look-alike validation sources by label (``pool.validation_per_label``)
VALIDATION_SOURCES = {SOURCES[n].label: n for n in SOURCES if SOURCES[n].role == "validation"}


def source_names(names: Iterable[str] | None = None) -> list[str]:
    """``names`` (default :data:`DEFAULT_SOURCES`) in the table's order, each once: the pools do not depend on the
    order a config lists them in. An unknown name, or none, is a one-line :class:`CadaError`."""
    if names is None:
        return list(DEFAULT_SOURCES)
    names = list(names)
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        what = f"unknown source {unknown[0]!r}" if unknown else "no source named"
        raise CadaError(f"pool.sources: {what}; use some of {', '.join(SOURCES)}")
    return [n for n in SOURCES if n in names]


def licenses(names: Iterable[str]) -> dict[str, str]:
    """``{source: its data license}`` for ``names``, in the table's order."""
    names = set(names)
    return {n: s.license for n, s in SOURCES.items() if n in names}


def raw_sources(data_dir: str | Path | None = None, names: Iterable[str] | None = None) -> list[RawPrompt]:
    """Every request of the named training sources (default: the five of :data:`DEFAULT_SOURCES`), source by
    source in the order of :data:`SOURCES`, with ids ``<prefix>-0000`` in read order (``dna-0000``,
    ``coconot-0000``, ``ccpref-0000``, ``ifeval-0000``, ``hh-0000``, ...)."""
    return [RawPrompt(f"{info.prefix}-{i:04d}", text.strip(), name, info.label)
            for name in source_names(names) for info in (SOURCES[name],)
            for i, text in enumerate(info.reader(data_dir))]
