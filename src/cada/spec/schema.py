"""The safety spec as data: detailed codes S, simple codes (statutes) and illustrative cases (precedents).

A spec lives in a directory holding ``statutes.yaml``, ``codes.yaml`` and ``cases.yaml`` (the shipped one is
``cada/spec/default``), or in a single YAML file with the top-level keys ``name``, ``categories``, ``statutes``,
``codes`` and ``cases``. Every validation problem is reported as ``PATH:LINE: what is wrong``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cada.errors import CadaError

DEFAULT_SPEC_DIR = Path(__file__).parent / "default"
SPEC_FILES = ("statutes.yaml", "codes.yaml", "cases.yaml")


#: a spec text longer than this many characters is warned about (a small model's context is about 8k tokens)
LONG_TEXT_CHARS = 2000


class Verdict(str, Enum):
    refuse = "refuse"
    comply = "comply"
    safe_complete = "safe_complete"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Category(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)


class Statute(_Strict):
    """A simple code: one short principle."""

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)


class Rule(_Strict):
    """One rule of the detailed codes, scoped to a hazard category."""

    id: str = Field(min_length=1)
    category: str
    prohibited: list[str] = Field(min_length=1)
    allowed: list[str] = Field(default_factory=list)


class Codes(_Strict):
    """The detailed codes S: the 4-tier policy (objectives, rules, defaults, style)."""

    objectives: list[str] = Field(min_length=1)
    rules: list[Rule] = Field(min_length=1)
    defaults: list[str] = Field(min_length=1)
    style: list[str] = Field(min_length=1)


class Precedent(_Strict):
    """An illustrative case: a request, the verdict it deserves and why."""

    id: str = Field(min_length=1)
    category: str
    request: str = Field(min_length=1)
    verdict: Verdict
    rationale: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)

    @field_validator("request", "rationale")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v


class Spec(_Strict):
    name: str = "custom"
    version: str = "1"
    categories: list[Category] = Field(min_length=1)
    statutes: list[Statute] = Field(min_length=1, max_length=8)
    codes: Codes
    cases: list[Precedent] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Spec":
        cat_ids = [c.id for c in self.categories]
        known = set(cat_ids)
        errors: list[tuple[tuple[Any, ...], str]] = []
        for kind, items in (("categories", self.categories), ("statutes", self.statutes),
                            ("codes.rules", self.codes.rules), ("cases", self.cases)):
            seen: set[str] = set()
            for i, item in enumerate(items):
                if item.id in seen:
                    errors.append(((*kind.split("."), i, "id"), f"duplicate id {item.id!r}"))
                seen.add(item.id)
        for i, rule in enumerate(self.codes.rules):
            if rule.category not in known:
                errors.append((("codes", "rules", i, "category"), f"unknown category {rule.category!r}"))
        for i, case in enumerate(self.cases):
            if case.category not in known:
                errors.append((("cases", i, "category"), f"unknown category {case.category!r}"))
        if errors:
            raise _CrossCheckError(errors)
        return self

    # --- conveniences -------------------------------------------------------------------------
    def case(self, case_id: str) -> Precedent:
        for c in self.cases:
            if c.id == case_id:
                return c
        raise KeyError(case_id)

    def category(self, cat_id: str) -> Category:
        for c in self.categories:
            if c.id == cat_id:
                return c
        raise KeyError(cat_id)

    def verdict_counts(self) -> dict[str, int]:
        counts = {v.value: 0 for v in Verdict}
        for c in self.cases:
            counts[c.verdict.value] += 1
        return counts

    def long_texts(self, limit: int = LONG_TEXT_CHARS) -> list[str]:
        """Warnings for texts longer than ``limit`` characters: a case sits in the prompt of every ``cases``
        answer it is retrieved for (and the codes in every ``codes`` one), so one very long text crowds the
        request out of a small model's context."""
        found = [(f"case {c.id} ({field})", len(getattr(c, field))) for c in self.cases
                 for field in ("request", "rationale") if len(getattr(c, field)) > limit]
        found += [(f"statute {s.id}", len(s.text)) for s in self.statutes if len(s.text) > limit]
        found += [(f"rule {r.id}", len(t)) for r in self.codes.rules for t in r.prohibited + r.allowed
                  if len(t) > limit]
        return [f"{where} is {n:,} characters (over {limit:,}): it fills a small model's context in every prompt "
                "it appears in; shorten it" for where, n in found]


class _CrossCheckError(ValueError):
    def __init__(self, errors: list[tuple[tuple[Any, ...], str]]):
        super().__init__("; ".join(m for _, m in errors))
        self.errors = errors


class SpecError(CadaError):
    """A spec failed to load; ``problems`` holds one ``PATH:LINE: message`` string each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else f"{problems[0]} (+{len(problems) - 1} more)")


# --- loading with line numbers ---------------------------------------------------------------

class _Located:
    """Maps a pydantic error location to the file and line of the YAML node it came from."""

    def __init__(self) -> None:
        self.roots: dict[str, tuple[Path, yaml.Node]] = {}  # top-level key -> (file, node of its value)
        self.files: list[Path] = []

    def line_for(self, loc: tuple[Any, ...]) -> str:
        if not loc or loc[0] not in self.roots:
            path = self.files[0] if self.files else Path("<spec>")
            # a missing top-level key: point at the first file
            return f"{path}:1"
        path, node = self.roots[loc[0]]
        for part in loc[1:]:
            child = _child(node, part)
            if child is None:
                break
            node = child
        return f"{path}:{node.start_mark.line + 1}"


def _child(node: yaml.Node, key: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]
    return None


def _read_yaml(path: Path, located: _Located) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{path}:0: file not found"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([f"{path}:0: cannot read file ({e})"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError([f"{path}:{line}: malformed YAML: {problem}"]) from None
    if data is None:
        data, node = {}, None
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1: expected a mapping of spec sections at the top level"])
    located.files.append(path)
    if node is not None:
        for k, v in node.value:
            located.roots[k.value] = (path, v)
    return data


def load_spec(path: str | Path | None = None) -> Spec:
    """Load and validate a spec directory or single YAML file (``None``: the shipped default)."""
    p = Path(path) if path is not None else DEFAULT_SPEC_DIR
    located = _Located()
    data: dict[str, Any] = {}
    if p.is_dir():
        present = [p / f for f in SPEC_FILES if (p / f).exists()]
        if not present:
            raise SpecError([f"{p}:0: no spec files found (expected {', '.join(SPEC_FILES)})"])
        for f in present:
            part = _read_yaml(f, located)
            for key in part:
                if key in data and key not in ("name", "version"):
                    raise SpecError([f"{f}:{located.roots[key][1].start_mark.line + 1}: "
                                     f"section {key!r} is defined in more than one file"])
            data.update(part)
    elif p.exists():
        data = _read_yaml(p, located)
    else:
        raise SpecError([f"{p}:0: spec file or directory not found"])
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, _CrossCheckError):
                problems += [f"{located.line_for(loc)}: {'.'.join(map(str, loc))}: {msg}"
                             for loc, msg in ctx_err.errors]
                continue
            loc = tuple(err["loc"])
            where = ".".join(map(str, loc)) or "spec"
            problems.append(f"{located.line_for(loc)}: {where}: {err['msg']}")
        raise SpecError(problems) from None
