"""A stage: a name, the files that say it is done, and the work that writes them.

Every stage of an arm and of a study says when it is done in one way: its ``outputs`` exist (each written last,
atomically, by the work: a training stage's ``train_info.json`` after its model, a generating stage's summary after
its records). A stage found done is skipped; one that is not runs, and its work resumes whatever it left (records
appended per chunk, a training run from its last checkpoint), so a killed run continues where it stopped. Each
run's time goes into the folder's ``stages.json`` ledger, so a resumed run reports what a stage took when it ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cada.errors import CadaError
from cada.records import read_json, write_json


@dataclass
class Stage:
    name: str                          # the ledger's key: "round 1: self-generation"
    outputs: tuple[Path, ...]          # all exist once the stage is done
    work: Callable[[], dict | None]    # does (or resumes) the stage; what it returns goes into the ledger
    where: Path | None = None          # the folder or file the log lines name
    title: str = ""                    # the log line (default: the name), with how much it runs on
    # False: the work logs its own lines, as the sizes they name become known (a set built, then trained on)
    announce: bool = True
    quiet: bool = False                # no line at all, done or not (a stage of seconds the next one names)

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)

    def line(self) -> str:
        return f"{self.title or self.name}{f' -> {self.where}' if self.where else ''}"


def training_outputs(folder: Path) -> tuple[Path, ...]:
    """A training stage is done once its model and then its ``train_info.json`` are written (a run killed while
    saving its weights trains again, and so does one whose model folder was deleted)."""
    return folder / "model" / "config.json", folder / "train_info.json"


class StageLog:
    """One line per stage on stderr: what runs, on how much, into which folder, and the minutes since the run
    started. The progress bars only count, so without these a long run's log does not say which stage it is in; a
    stage a resumed run finds finished says so. Silent when ``show`` is false."""

    def __init__(self, prefix: str = "cada align", show: bool = True):
        self.prefix, self.console, self.t0 = prefix, None, time.perf_counter()
        if show:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    @property
    def active(self) -> bool:
        return self.console is not None

    def __call__(self, text: str, *, done: bool = False) -> None:
        if self.console is None:
            return
        from rich.markup import escape

        minutes = (time.perf_counter() - self.t0) / 60
        self.console.print(f"[bold]{self.prefix}[/] {escape(text)}{' (done, skipped)' if done else ''}"
                           f"  [dim]{minutes:.1f} min[/]", soft_wrap=True)


@dataclass
class Ledger:
    """``stages.json`` in a run folder: each stage's seconds (and what its work returned) when it last ran."""

    path: Path
    entries: dict = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> "Ledger":
        path = folder / "stages.json"
        return cls(path, read_json(path) if path.exists() else {})

    def seconds(self, name: str) -> float | None:
        return (self.entries.get(name) or {}).get("seconds")

    def record(self, name: str, seconds: float, info: dict | None) -> None:
        self.entries[name] = {"seconds": round(seconds, 1), **(info or {})}
        write_json(self.path, self.entries)


def run_stage(stage: Stage, ledger: Ledger, log: StageLog) -> bool:
    """Run ``stage`` unless it is done; returns whether it ran."""
    if stage.done():
        if not stage.quiet:
            log(stage.line(), done=True)
        return False
    if stage.announce and not stage.quiet:
        log(stage.line())
    t = time.perf_counter()
    info = stage.work()
    ledger.record(stage.name, time.perf_counter() - t, info)
    return True


def check_server(base_url: str | None, timeout: float = 5.0, flag: str = "--base-url (or $CADA_BASE_URL)") -> None:
    """Before the first stage: a server that generation will go to must answer (any HTTP status counts: a 401
    or 404 is still a server), so an unreachable ``--base-url`` fails in seconds, not after the pools are built.
    Only a URL the config names is probed: ``$CADA_BASE_URL`` is met by the first generator that uses it, and a
    resumed run whose generating stages are done never does."""
    import urllib.error
    import urllib.request

    url = base_url
    if not url:
        return
    try:
        urllib.request.urlopen(url.rstrip("/") + "/models", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CadaError(f"cannot reach the server at {url} ({reason}); check {flag} and that the server is up: "
                        "no stage has run") from None
