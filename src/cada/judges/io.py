"""Rows in from CSV, JSON or JSONL; JSONL out. Bad input becomes one CadaError naming the file, line and column."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from cada.errors import CadaError
from cada.records import write_records

FORMATS = (".csv", ".json", ".jsonl")


def read_rows(path: str | Path) -> list[dict]:
    """Read a table of records: ``.csv`` (header row), ``.json`` (a list of objects) or ``.jsonl`` (one a line)."""
    path = Path(path)
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
    for n, line in enumerate(text.splitlines(), 1):
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


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write one JSON object a line (UTF-8, non-ASCII kept readable), creating parent folders; atomic, so a
    killed run leaves the previous file or none, never half of one."""
    write_records(path, rows)
    return Path(path)
