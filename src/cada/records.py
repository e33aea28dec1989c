"""Records: the rows stages hand each other, typed in one place, and the one reader and writer for them.

Every stage writes one JSON object a line, appended crash-safely, so any stage can be resumed, inspected with
``head``, or loaded with ``datasets.load_dataset("json", data_files=...)``. The rows:

==================  ===========================================  ==================================================
row                 written by                                   fields
==================  ===========================================  ==================================================
:class:`PoolPrompt` the pools (``pool/*.jsonl``)                 id, prompt, base_prompt, label, category, source,
                                                                 jailbreak, label_source
:class:`Chain`      self-generation (``round-*/records.jsonl``)  the prompt's fields, mode, sample, raw, reasoning,
                                                                 response, format_ok, judge, judge_probs, reward,
                                                                 cited_cases, context_cases
:class:`Pair`       ``cada pairs`` / the DPO arms                prompt, chosen, rejected (TRL conversational), id,
                                                                 label, category, ...
:class:`SftRow`     the SFT sets (``sft.jsonl``, ``warmup.jsonl``)  id, label, category, prompt, completion
:class:`EvalItem`   the evaluation sets (in memory)              id, prompt, kind, category, attack, reference, meta
:class:`EvalRecord` evaluation (``eval/*/records.jsonl``)        id, prompt, kind, category, attack, mode, raw,
                                                                 reasoning, response, format_ok, judge, cited_cases
                                                                 [, reference, correct, rubric_score, rubric,
                                                                 scoring, logprobs]
==================  ===========================================  ==================================================

Rows stay plain dicts on disk and in memory (what TRL and ``datasets`` take); the TypedDicts name their fields for
readers and type checkers, and :func:`require` checks a user's file has them before a stage reads it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

from pydantic import BaseModel, ConfigDict

from cada.errors import CadaError

Label = Literal["harmful", "benign"]
Source = Literal["do_not_answer", "coconot_contrast", "coconot_pref", "ifeval", "beavertails", "catqa", "harmfulqa",
                 "safety_tuned_llamas", "or_bench_toxic", "or_bench_80k", "alpaca", "hh_rlhf", "user"]
Message = dict[str, str]


class PoolPrompt(BaseModel):
    """One training request. ``prompt`` is what the model sees; ``base_prompt`` the request before any wrapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    prompt: str
    base_prompt: str
    label: Label
    category: str
    source: Source
    jailbreak: str | None = None
    label_source: Literal["dataset", "auto"] = "dataset"


class Chain(TypedDict, total=False):
    """One self-generated reasoning chain, judged and rewarded (a line of ``round-<i>/records.jsonl``)."""

    id: str
    prompt: str
    label: Label
    category: str | None
    source: str | None
    jailbreak: str | None
    mode: str
    sample: int
    raw: str
    reasoning: str
    response: str
    format_ok: bool
    judge: str
    judge_probs: dict | None
    reward: float
    cited_cases: list[str]
    context_cases: list[str]


class SftRow(TypedDict):
    """One context-distilled SFT example in TRL's conversational prompt/completion form (loss on the answer)."""

    id: str
    label: str
    category: str | None
    prompt: list[Message]
    completion: list[Message]


class Pair(TypedDict, total=False):
    """One DPO pair in TRL's conversational form, with the prompt's id, label and category beside it."""

    id: str
    label: str
    category: str | None
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


@dataclass
class EvalItem:
    """One prompt of an evaluation set."""

    id: str
    prompt: str
    kind: str                     # harmful | benign | utility
    category: str | None = None
    attack: str | None = None     # jailbreak wrapper name, if any
    reference: str | None = None  # reference answer (utility sets)
    meta: dict = field(default_factory=dict)


class EvalRecord(TypedDict, total=False):
    """One answered and judged evaluation prompt (a line of ``eval/<system>/<set>/records.jsonl``)."""

    id: str
    prompt: str
    kind: str
    category: str | None
    attack: str | None
    mode: str
    raw: str
    reasoning: str
    response: str
    format_ok: bool
    judge: str
    cited_cases: list[str]
    reference: str
    correct: bool
    rubric_score: float | None
    rubric: dict
    scoring: str                  # "loglik": scored by log-likelihood (MMLU), nothing generated or judged
    logprobs: dict[str, float]    # with scoring "loglik": each answer letter's log-probability


#: the fields a stage needs from a file of each kind of row, and where such a file comes from
REQUIRED = {"chain": (("id", "prompt", "label", "sample", "response", "judge", "reward"), "cada generate"),
            "pair": (("prompt", "chosen", "rejected"), "cada pairs"),
            "eval_record": (("id", "prompt", "kind", "response", "judge"), "cada eval")}


def require(rows: Sequence[dict], kind: str, path: str | Path) -> None:
    """A one-line error naming the first row of ``path`` that lacks a field a ``kind`` row must have."""
    need, source = REQUIRED[kind]
    for i, r in enumerate(rows, 1):
        missing = [k for k in need if k not in r]
        if missing:
            raise CadaError(f"{path}: record {i} lacks {', '.join(missing)}: give records written by `{source}`")


def checkpoint_size(generator, default: int = 64) -> int:
    """How many prompts a generating stage answers between two appends: one batch of ``generator``, so a kill
    loses at most the batch in flight. Over HTTP the requests in flight (``concurrency``); locally the batch
    (``batch_size``; on CUDA, where the batch is sized from free memory, ``max_batch_size``); else ``default``."""
    if getattr(generator, "concurrency", None):
        return max(1, int(generator.concurrency))
    size = getattr(generator, "batch_size", None)
    if not size:
        return default
    adaptive = getattr(generator, "adaptive_batch", None)
    if adaptive is None:
        device = getattr(getattr(generator, "model", None), "device", None)
        adaptive = getattr(device, "type", None) == "cuda"
    return max(1, int(getattr(generator, "max_batch_size", size) if adaptive else size))


def append_in_chunks(path: str | Path, todo: Sequence, size: int, answer) -> list[dict]:
    """The loop of every generating stage (self-generation, evaluation, direct answers): ``answer(chunk) -> rows``
    for each chunk of ``todo``, each chunk's rows appended (and fsynced) before the next starts, so a kill loses at
    most the chunk in flight and a rerun that skips what ``path`` holds never duplicates a row. Returns the rows."""
    new: list[dict] = []
    for chunk in chunks(list(todo), size):
        rows = answer(chunk)
        append_records(path, rows)
        new += rows
    return new


# --- JSONL records (resumable) -----------------------------------------------------------------------

def read_records(path: str | Path, *, repair: bool = False) -> list[dict]:
    """All records of a JSONL file ([] when it does not exist).

    A torn last line (a run killed mid-write) is dropped, and with ``repair=True`` cut from the file, so an append
    that resumes the run never glues onto half a record. A bad line elsewhere is an error naming file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise CadaError(f"{path}: is a folder, give a file")
    records: list[dict] = []
    good_bytes = 0
    with path.open("rb") as f:
        lines = f.readlines()
    for i, raw in enumerate(lines, 1):
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            good_bytes += len(raw)
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if i == len(lines) and not raw.endswith(b"\n"):
                break  # torn final line
            raise CadaError(f"{path}:{i}: not a JSON object ({e.msg})") from None
        if not isinstance(obj, dict):
            raise CadaError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        records.append(obj)
        good_bytes += len(raw)
    if repair and good_bytes < path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    elif repair and lines and lines[-1].strip() and not lines[-1].endswith(b"\n"):
        with path.open("ab") as f:  # a whole last record cut before its newline: the next append starts a line
            f.write(b"\n")
    return records


def append_records(path: str | Path, records: Iterable[dict]) -> int:
    """Append records and fsync, so what was written survives a kill; returns how many."""
    path = Path(path)
    n = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CadaError(_unwritable(path, e)) from None
    return n


def _unwritable(path: Path, e: OSError) -> str:
    if path.is_dir():
        return f"{path}: is a folder, give a file"
    return f"{path}: cannot write there ({e.strerror or type(e).__name__})"


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename ``tmp`` over ``path``; a failed write leaves no temp file and the old file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CadaError(_unwritable(path, e)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Write a whole file atomically (temp file + rename); a failed write leaves nothing behind."""
    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1

    _atomic(Path(path), write)
    return n


def write_json(path: str | Path, obj) -> None:
    """Write one JSON document atomically (temp file + rename): a kill never leaves half a summary, and a failed
    write leaves no temp file."""
    text = json.dumps(obj, indent=2)
    _atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_writable(path: str | Path, *, folder: bool, flag: str = "--output") -> None:
    """Refuse an output before any work is done: a file where a folder goes or a folder where a file goes, a path
    under a file, or a place this process cannot create files in (probed with a temp file, so it holds for root
    too). Whatever the probe creates is removed again."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise CadaError(f"{flag} {path}: is a file, give a folder")
    if not folder and path.is_dir():
        raise CadaError(f"{flag} {path}: is a folder, give a file")
    where = path if folder else path.parent
    missing = []
    top = where
    while not top.exists() and top != top.parent:
        missing.append(top)
        top = top.parent
    if top.exists() and not top.is_dir():
        raise CadaError(f"{flag} {path}: {top} is a file, not a folder")
    import tempfile

    created: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        fd, probe = tempfile.mkstemp(dir=where, prefix=".cada-probe-")
        os.close(fd)
        os.unlink(probe)
        if not folder and path.exists():  # appended to or replaced: it must open for writing
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as e:
        raise CadaError(f"{flag} {path}: cannot write there ({e.strerror or type(e).__name__})") from None
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass


def check_input(path: str | Path, flag: str, what: str = "file") -> Path:
    """An input file that exists and is a file: else a one-line error (``is a folder, give a file`` / ``not
    found``) naming the flag."""
    path = Path(path)
    if path.is_dir():
        raise CadaError(f"{flag} {path}: is a folder, give a file")
    if not path.is_file():
        raise CadaError(f"{path}: {what} not found")
    return path


def read_json(path: str | Path):
    """One JSON document; a broken one is an error naming the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CadaError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); delete the file to redo the step that "
                        "wrote it") from None


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + size]


# --- tables in (CSV, JSON, JSONL), as users give them ----------------------------------------------

FORMATS = (".csv", ".json", ".jsonl")



def read_rows(path: str | Path) -> list[dict]:
    """Read a table of records: ``.csv`` (header row), ``.json`` (a list of objects) or ``.jsonl`` (one a line)."""
    path = Path(path)
    if path.is_dir():
        raise CadaError(f"{path}: is a folder, give a file")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CadaError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .csv, .json or .jsonl")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CadaError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise CadaError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return {".csv": _csv, ".json": _json, ".jsonl": _jsonl}[suffix](path, text)


def _csv(path: Path, text: str) -> list[dict]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))  # long responses are legitimate cells
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise CadaError(f"{path}: empty CSV file (expected a header row)")
        rows = []
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise CadaError(f"{path}:{reader.line_num}: {len(fields)} fields but the header has {len(header)}")
            rows.append(dict(zip(header, fields)))
        return rows
    except csv.Error as e:
        raise CadaError(f"{path}:{reader.line_num}: bad CSV ({e})") from None


def _json(path: Path, text: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CadaError(f"{path}:{e.lineno}:{e.colno}: bad JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise CadaError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise CadaError(f"{path}: item {i} is {type(row).__name__}, expected an object")
    return data


def _jsonl(path: Path, text: str) -> list[dict]:
    rows = []
    # split on newlines only: str.splitlines also breaks at U+2028 and other separators JSON strings may hold
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CadaError(f"{path}:{n}:{e.colno}: bad JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise CadaError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def column(rows: list[dict], name: str, path: str | Path, *, required: bool = True) -> list:
    """The values of one column; a CadaError lists the columns there are when it is missing."""
    missing = next((i for i, r in enumerate(rows) if name not in r), None)
    if missing is not None:
        if not required:
            return [r.get(name) for r in rows]
        have = ", ".join(rows[missing]) or "(none)"
        raise CadaError(f"{path}: row {missing + 1} has no column {name!r}; columns: {have}")
    return [r[name] for r in rows]


def read_yaml(path) -> object:
    """A YAML config file's content ({} when empty), with one-line errors naming the file (and line)."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except IsADirectoryError:
        raise CadaError(f"{path}: is a folder; give a YAML config file") from None
    except UnicodeDecodeError:
        raise CadaError(f"{path}: not UTF-8 text (saved as UTF-16? re-save it as UTF-8)") from None
    except FileNotFoundError:
        moved = Path(*["recipes" if part == "configs" else part for part in Path(path).parts])
        hint = f" (the shipped configs moved to recipes/: use {moved})" if moved.is_file() else ""
        raise CadaError(f"{path}: config file not found{hint}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise CadaError(f"{path}:{mark.line + 1 if mark else 0}: malformed YAML") from None
