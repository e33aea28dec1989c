"""Records: one JSON object a line, appended crash-safely, so any stage can be resumed, inspected with ``head``,
or loaded with ``datasets.load_dataset("json", data_files=...)``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from cada.errors import CadaError


def read_records(path: str | Path, *, repair: bool = False) -> list[dict]:
    """All records of a JSONL file ([] when it does not exist).

    A torn last line (a run killed mid-write) is dropped, and with ``repair=True`` cut from the file, so an append
    that resumes the run never glues onto half a record. A bad line elsewhere is an error naming file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
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
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Write a whole file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def write_json(path: str | Path, obj) -> None:
    """Write one JSON document atomically (temp file + rename): a kill never leaves half a summary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    os.replace(tmp, path)


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
