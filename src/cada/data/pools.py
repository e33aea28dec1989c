"""Prompt pools for self-generation: harmful and benign training requests, labelled and categorised, with a share
of the harmful ones wrapped in in-the-wild jailbreak templates, and no overlap with any evaluation prompt; a user's
own pool; the held-back split; the look-alike validation prompts; and every draw the later stages make from a pool.

The sources are read by :mod:`cada.data.sources` (its table lists them; ``pool.sources`` picks them, default the
five below). Every prompt but the IFEval ones takes the hazard category of its nearest precedent in the spec
(sentence-embedding cosine similarity, the encoder of :mod:`cada.spec.retrieval`); so do the prompts of every new
source, Alpaca's plain instructions too. Every source's prompts go through the same overlap checks.

**Labelling rule for HH-RLHF** (:func:`auto_label`): the ``LABEL_K`` = 3 nearest labelled references by embedding
similarity vote, counting only those at least ``LABEL_FLOOR`` = 0.3 similar; harmful when most votes are harmful,
benign otherwise (also when no reference is close enough). The references are the spec's precedents (refuse and
safe_complete = harmful, comply = benign) **and** the dataset-labelled pool prompts (Do-Not-Answer = harmful,
CoCoNot contrast = benign). Precedents alone do not separate prompts of known label: with the 66 shipped precedents
the same vote calls 55% of Do-Not-Answer and 47% of CoCoNot contrast harmful without a floor (23% and 15% with it),
so the labelled pools join them as references; then 98% and 16% (each prompt left out of its own vote; see
``experiments/pools.py``). HH-RLHF turns the vote does not call harmful are **dropped, not used as benign**: they
are red-team openers, and many that no reference is close to are still harmful ("How can I do a drive by
shooting?"). As benign training prompts they taught the model to comply with harmful requests, and as held-back
benign prompts they counted refusals of them as over-refusal. The default benign pools are IFEval and the two
CoCoNot sets; the CoCoNot preference prompts do not vote, nor do the newer sources' prompts (the rule above is
unchanged by them). A selection without Do-Not-Answer or CoCoNot contrast still reads them to vote (and leaves them
out of its pools). The vote separates harmful requests from plain ones, not from look-alikes: it calls about 91% of
the OR-Bench-80K look-alikes harmful (and about half of Alpaca's and IFEval's instructions), so no benign source is
labelled by it.

**Validation** (:func:`validation_pool`): ``pool.validation_per_label`` OR-Bench-80K look-alikes (benign) and
OR-Bench toxic prompts (harmful), set aside by :func:`cada.pipeline.pools.prepare_pools` before any draw.

Jailbreak templates come from :mod:`cada.data.jailbreaks`, and the overlap checks from :mod:`cada.data.decontam`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cada.data.decontam import (EvalIndex, drop_overlap, drop_paraphrases, embed_cached, fixed_eval_sets, normalize,
                                paraphrase_references, removal_record)
from cada.data.jailbreaks import fill_template, load_jailbreak_templates, split_templates, template_id
from cada.data.sources import SOURCES, VALIDATION_SOURCES, RawPrompt, raw_sources, source_names
from cada.errors import CadaError
from cada.records import PoolPrompt, read_records, write_records
from cada.spec.schema import Spec, Verdict, load_spec

log = logging.getLogger(__name__)

NO_CATEGORY = "none"
LABELS = ("harmful", "benign")
LABEL_K = 3
LABEL_FLOOR = 0.3
HARMFUL_VERDICTS = frozenset({Verdict.refuse, Verdict.safe_complete})

#: benign prompts written to look risky (what a model over-refuses)
LOOKALIKE_SOURCES = frozenset({"coconot_contrast", "coconot_pref", "or_bench_80k"})
#: dataset-labelled sources whose prompts vote in :func:`auto_label` beside the spec's precedents
LABEL_REFERENCE_SOURCES = frozenset({"do_not_answer", "coconot_contrast"})


@dataclass
class Pools:
    """The built pools: the prompts, what was removed for overlapping evaluation data, and counts."""

    prompts: list[PoolPrompt]
    removed: list[dict] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    #: every source the build read (its prompts, or its labels as :func:`auto_label` references): its license
    licenses: dict[str, str] = field(default_factory=dict)


# --- labels and categories -----------------------------------------------------------------------

def _first_of_each(raw: Iterable[RawPrompt]) -> list[RawPrompt]:
    """``raw`` without later repeats of a normalised text (empty texts dropped)."""
    first: dict[str, RawPrompt] = {}
    for r in raw:
        first.setdefault(normalize(r.text), r)
    first.pop("", None)
    return list(first.values())


def _nearest_precedents(texts: Sequence[str], spec: Spec):
    """Embeddings of ``texts`` (n x 384) and their cosine similarities to the spec's precedents (n x cases)."""
    emb = embed_cached(list(texts))
    return emb, emb @ embed_cached([c.request for c in spec.cases]).T


def nearest_categories(texts: Sequence[str], spec: Spec | None = None) -> list[str]:
    """The category of each text's nearest precedent (sentence-embedding cosine similarity)."""
    spec = spec or load_spec()
    if not texts:
        return []
    _, sims = _nearest_precedents(list(texts), spec)
    return [spec.cases[int(i)].category for i in sims.argmax(axis=1)]


def auto_label(sims, ref_harmful: Sequence[bool], k: int = LABEL_K, floor: float = LABEL_FLOOR) -> list[str]:
    """Label rows by a vote of their ``k`` most similar references that are at least ``floor`` similar.

    ``sims`` is a (texts x references) similarity matrix. Harmful when more than half the counted votes are
    harmful; benign otherwise, including when no reference is close enough.

    >>> import numpy as np
    >>> auto_label(np.array([[0.9, 0.8, 0.1], [0.9, 0.2, 0.2], [0.1, 0.1, 0.2]]), [True, True, False])
    ['harmful', 'harmful', 'benign']
    """
    import numpy as np

    harmful = np.asarray(ref_harmful, dtype=bool)
    labels = []
    for row in np.asarray(sims):
        top = [j for j in row.argsort()[::-1][:k] if row[j] >= floor]
        labels.append("harmful" if top and 2 * harmful[top].sum() > len(top) else "benign")
    return labels


def _label_and_categorise(raw: list[RawPrompt], spec: Spec) -> list[PoolPrompt]:
    """PoolPrompts for ``raw``: categories from the nearest precedent, HH-RLHF labels from :func:`auto_label`."""
    import numpy as np

    embedded = [r for r in raw if r.source != "ifeval"]  # the other sources, the new ones too, are embedded
    if not embedded:
        return [_prompt(r, r.label or "benign", NO_CATEGORY) for r in raw]
    emb, case_sims = _nearest_precedents([r.text for r in embedded], spec)
    category = {r.id: spec.cases[int(i)].category for r, i in zip(embedded, case_sims.argmax(axis=1))}
    labels: dict[str, str] = {r.id: r.label for r in raw if r.label}
    todo = [i for i, r in enumerate(embedded) if r.label is None]
    if todo:
        known = [i for i, r in enumerate(embedded) if r.source in LABEL_REFERENCE_SOURCES]
        sims = np.hstack([case_sims[todo], emb[todo] @ emb[known].T])
        refs = [c.verdict in HARMFUL_VERDICTS for c in spec.cases] + [embedded[i].label == "harmful" for i in known]
        labels.update(zip((embedded[i].id for i in todo), auto_label(sims, refs)))
    return [_prompt(r, labels[r.id], category.get(r.id, NO_CATEGORY)) for r in raw]


def _prompt(r: RawPrompt, label: str, category: str) -> PoolPrompt:
    return PoolPrompt(id=r.id, prompt=r.text, base_prompt=r.text, label=label, category=category, source=r.source,
                      label_source="dataset" if r.label else "auto")


# --- the pools -----------------------------------------------------------------------------------

def wrap_in_jailbreaks(prompts: list[PoolPrompt], templates: list[str], share: float,
                       seed: int) -> list[PoolPrompt]:
    """Wrap a seeded random ``share`` of the harmful prompts, each in a seeded random template of ``templates``
    (filled by :func:`cada.data.jailbreaks.fill_template`)."""
    harmful = [i for i, p in enumerate(prompts) if p.label == "harmful"]
    if not templates or share <= 0 or not harmful:
        return prompts
    rng = random.Random(seed)
    out = list(prompts)
    for i in sorted(rng.sample(harmful, round(min(share, 1.0) * len(harmful)))):
        t = rng.choice(templates)
        out[i] = out[i].model_copy(update={"prompt": fill_template(t, out[i].base_prompt),
                                           "jailbreak": template_id(t)})
    return out


def build_pools(data_dir: str | Path | None = None, *, jailbreak_share: float = 0.25, seed: int = 0,
                spec: Spec | None = None, sources: Sequence[str] | None = None) -> Pools:
    """Build the training pools from the shipped data (or ``data_dir``, laid out like ``cada/data/files``).

    Steps: read the sources (``sources``: names of :data:`cada.data.sources.SOURCES`, default the five of
    ``DEFAULT_SOURCES``; an unknown one is a :class:`CadaError`); drop repeated requests (same normalised text; the
    first source wins); remove requests that overlap an evaluation prompt (exact, near duplicate, or a paraphrase by
    sentence embedding); label and categorise, dropping automatically labelled turns (HH-RLHF) not labelled harmful;
    wrap ``jailbreak_share`` of the harmful requests in training jailbreak templates; remove wrapped prompts that
    overlap an evaluation prompt.
    When an automatically labelled source is read without the labelled pools that vote in :func:`auto_label`
    (:data:`LABEL_REFERENCE_SOURCES`), they are read too, after the others, to vote, and left out of the pools: the
    source's prompts are labelled as in the default pools.
    Deterministic for a given ``seed``, spec and set of sources (not their order).
    """
    spec = spec or load_spec()
    names = source_names(sources)
    auto = [n for n in names if SOURCES[n].label is None]
    voters = [n for n in SOURCES if auto and n in LABEL_REFERENCE_SOURCES and n not in names]
    removed: list[dict] = []
    train_t, eval_t, dropped = split_templates(load_jailbreak_templates(data_dir))
    fixed = fixed_eval_sets(data_dir)
    eval_index = EvalIndex({**fixed, "jailbreak_eval": eval_t})

    raw_all = raw_sources(data_dir, names) + (raw_sources(data_dir, voters) if voters else [])
    raw = _first_of_each(raw_all)
    duplicates = sum(r.source in names for r in raw_all) - sum(r.source in names for r in raw)
    raw = drop_overlap(raw, lambda r: (r.id, r.text, r.source), eval_index, removed)
    raw = drop_paraphrases(raw, lambda r: (r.id, r.text, r.source), paraphrase_references(fixed), removed)
    prompts = _label_and_categorise(raw, spec)
    if voters:  # they voted; they are no part of this selection's pools
        prompts = [p for p in prompts if p.source in names]
        removed = [r for r in removed if r["source"] in names]
    unsure = {n: sum(p.source == n and p.label != "harmful" for p in prompts) for n in auto}
    prompts = [p for p in prompts if p.label_source != "auto" or p.label == "harmful"]

    removed += [removal_record(template_id(t), t, "jailbreak_template", m, "jailbreak_eval") for t, m in dropped]
    train_t = drop_overlap(train_t, lambda t: (template_id(t), t, "jailbreak_template"), eval_index, removed)
    prompts = wrap_in_jailbreaks(prompts, train_t, jailbreak_share, seed)
    wrapped = drop_overlap([p for p in prompts if p.jailbreak], lambda p: (p.id, p.prompt, p.source), eval_index,
                           removed)
    keep = {p.id for p in wrapped}
    prompts = [p for p in prompts if not p.jailbreak or p.id in keep]
    counts = _counts(prompts, removed)
    counts.update(duplicates_dropped=duplicates, **{f"{n}_not_harmful_dropped": k for n, k in unsure.items()},
                  jailbreak_templates={"train": len(train_t), "eval": len(eval_t)})
    return Pools(prompts=prompts, removed=removed, counts=counts,
                 licenses={n: s.license for n, s in SOURCES.items() if n in names or n in voters})


def validation_pool(per_label: int, data_dir: str | Path | None = None, *, seed: int = 0,
                    spec: Spec | None = None) -> Pools:
    """The look-alike validation prompts: per label, ``per_label`` prompts of its validation source
    (:data:`cada.data.sources.VALIDATION_SOURCES`: OR-Bench-80K benign look-alikes, OR-Bench toxic harmful),
    picked as :func:`split_heldout` picks (lowest sha256 of ``seed:id``; a source with fewer is taken whole).

    They are built as every pool is (repeats dropped, every overlap check against the evaluation prompts, labels and
    categories), unwrapped; ``counts`` are theirs. Their ids are the ones those sources have in any pool, so a pool
    that also trains on these sources can leave them out by id (and their near duplicates, see
    :func:`cada.data.decontam.drop_near_heldout`).
    """
    built = build_pools(data_dir, jailbreak_share=0.0, seed=seed, spec=spec,
                        sources=[VALIDATION_SOURCES[label] for label in LABELS])
    _, picked = split_heldout(built.prompts, n_heldout_per_label=per_label, seed=seed)
    removed = [r for r in built.removed if r["source"] in built.licenses]  # the training templates' are not theirs
    counts = {**_counts(picked, removed), "candidates": built.counts["by_source"]}
    return Pools(prompts=picked, removed=removed, counts=counts, licenses=built.licenses)


def _counts(prompts: Sequence[PoolPrompt], removed: Sequence[dict]) -> dict[str, Any]:
    def by(key: Callable[[Any], Any], items: Iterable) -> dict[str, int]:
        return dict(sorted(Counter(key(x) for x in items).items()))

    return {
        "total": len(prompts),
        "by_source": by(lambda p: p.source, prompts),
        "by_label": by(lambda p: p.label, prompts),
        "by_source_label": by(lambda p: f"{p.source}/{p.label}", prompts),
        "by_category": by(lambda p: p.category, prompts),
        "by_category_label": by(lambda p: f"{p.category}/{p.label}", prompts),
        "jailbroken": sum(p.jailbreak is not None for p in prompts),
        "removed_by_eval_set": by(lambda r: r["eval_set"], removed),
        "removed_by_source": by(lambda r: r["source"], removed),
        "removed_by_kind": by(lambda r: r["kind"], removed),
    }


# --- user pools ----------------------------------------------------------------------------------

def _user_rows(path: Path) -> list[tuple[str, dict]]:
    """(location, row) pairs of a CSV, JSON (a list of objects) or JSONL file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                return [(f"{path}:{reader.line_num}", row) for row in reader]
        if suffix == ".jsonl":
            rows = []
            for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):  # not at U+2028
                if line.strip():
                    try:
                        rows.append((f"{path}:{i}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise CadaError(f"{path}:{i}: malformed JSON line ({e.msg})") from None
            return rows
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise CadaError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise CadaError(f"{path}:1: expected a JSON list of objects")
            return [(f"{path}: item {i}", row) for i, row in enumerate(data)]
    except (OSError, UnicodeDecodeError) as e:
        raise CadaError(f"{path}: cannot read the pool file ({e})") from None
    raise CadaError(f"{path}: unknown pool format {suffix!r}; use .csv, .json or .jsonl")


def _field(where: str, row: Any, column: str) -> str:
    if not isinstance(row, dict):
        raise CadaError(f"{where}: expected an object with a {column!r} field")
    if column not in row:
        raise CadaError(f"{where}: missing column {column!r}")
    value = row[column]
    if isinstance(value, (bool, dict, list)):
        # a chat-format pool (messages as objects) would otherwise become the text of a Python dict
        raise CadaError(f"{where}: column {column!r} is a {type(value).__name__}, not text; a prompt must be a "
                        "string")
    return "" if value is None else str(value).strip()


def load_user_pool(path: str | Path, *, prompt_column: str = "prompt", label_column: str = "label",
                   category_column: str | None = None, spec: Spec | None = None) -> list[PoolPrompt]:
    """A user's own pool from CSV, JSON (list of objects) or JSONL with a prompt and a harmful|benign label.

    Categories come from ``category_column`` (a category id of the spec, or ``none``; an unknown one is an error) or
    by default from the file's ``category`` column where it has one (a name the spec does not know is logged and
    replaced), else, and for empty cells, from the prompt's nearest precedent in ``spec``. Bad input
    raises a one-line :class:`CadaError` naming file, line or item and column.
    """
    path = Path(path)
    if not path.is_file():
        raise CadaError(f"{path}: pool file not found")
    spec = spec or load_spec()
    allowed = {c.id for c in spec.categories} | {NO_CATEGORY}
    rows = []
    found = _user_rows(path)
    auto = category_column is None and bool(found) and isinstance(found[0][1], dict) and "category" in found[0][1]
    if auto:
        category_column = "category"
    foreign: Counter = Counter()
    for where, row in found:
        text, label = _field(where, row, prompt_column), _field(where, row, label_column).lower()
        if not text:
            raise CadaError(f"{where}: column {prompt_column!r} is empty")
        if label not in LABELS:
            raise CadaError(f"{where}: column {label_column!r} must be harmful or benign, got {label!r}")
        category = (_field(where, row, category_column) or None) if category_column else None
        if auto and category is not None and category not in allowed:
            foreign[category] += 1  # a file's own category names: the spec's nearest precedent decides instead
            category = None
        if category is not None and category not in allowed:
            raise CadaError(f"{where}: column {category_column!r}: unknown category {category!r} "
                            f"(use one of the spec's category ids or {NO_CATEGORY!r})")
        rows.append((text, label, category))
    if not rows:
        raise CadaError(f"{path}: the pool is empty")
    if foreign:
        log.warning(
            "%s: %d prompts have a category the spec does not know (%s); their categories come from the nearest "
            "precedent", path, sum(foreign.values()), ", ".join(sorted(foreign)))
    missing = [i for i, (_, _, c) in enumerate(rows) if c is None]  # no column, an empty cell, a foreign name
    if missing:
        cats = nearest_categories([rows[i][0] for i in missing], spec)
        for i, c in zip(missing, cats):
            rows[i] = (rows[i][0], rows[i][1], c)
    return [PoolPrompt(id=f"user-{i:04d}", prompt=t, base_prompt=t, label=lab, category=c, source="user")
            for i, (t, lab, c) in enumerate(rows)]


# --- files ---------------------------------------------------------------------------------------

def write_pool(path: str | Path, prompts: Iterable[PoolPrompt]) -> int:
    """Write pool prompts as one JSON object a line (atomically); returns how many."""
    return write_records(path, (p.model_dump() for p in prompts))


def read_pool(path: str | Path) -> list[PoolPrompt]:
    """Pool prompts from a JSONL file written by :func:`write_pool`.

    A JSONL file of plain user records (``prompt``, ``label``, optional ``category``) is read with
    :func:`load_user_pool` instead.
    """
    path = Path(path)
    if not path.is_file():
        raise CadaError(f"{path}: pool file not found")
    records = read_records(path)
    if records and not {"id", "base_prompt", "source"} <= records[0].keys():
        return load_user_pool(path)
    out = []
    for i, rec in enumerate(records, 1):
        try:
            out.append(PoolPrompt.model_validate(rec))
        except ValidationError as e:
            err = e.errors()[0]
            raise CadaError(f"{path}: record {i}: {'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}") from None
    return out


# --- draws ---------------------------------------------------------------------------------------

def split_heldout(prompts: Sequence[PoolPrompt], n_heldout_per_label: int = 50,
                  seed: int = 0) -> tuple[list[PoolPrompt], list[PoolPrompt]]:
    """(train, heldout): per label, the ``n_heldout_per_label`` prompts whose sha256 of ``seed:id`` is lowest.

    Stable: independent of the order of ``prompts``; both parts keep the input order. A label with fewer prompts
    is held back whole.
    """
    def key(p: PoolPrompt) -> str:
        return hashlib.sha256(f"{seed}:{p.id}".encode()).hexdigest()

    held: set[str] = set()
    for label in LABELS:
        held.update(p.id for p in sorted((p for p in prompts if p.label == label), key=key)[:n_heldout_per_label])
    return [p for p in prompts if p.id not in held], [p for p in prompts if p.id in held]


def calibration_draw(prompts: list, n_benign: int, seed: int) -> list:
    """``n_benign`` benign and ``n_benign // 2`` harmful prompts for the calibration pass, drawn at random (fewer
    when the pool runs out); they are set aside before the other stages draw theirs."""
    rng = random.Random(seed)
    out = []
    for label, n in (("benign", n_benign), ("harmful", n_benign // 2)):
        xs = [p for p in prompts if p.label == label]
        rng.shuffle(xs)
        out += xs[:n]
    return out


def extend(own: list, everything: list, per_label: int, seed: int) -> list:
    """``own`` prompts first, then more of ``everything`` drawn at random, up to ``per_label`` per label."""
    ids = {p.id for p in own}
    more = balanced([p for p in everything if p.id not in ids], per_label, seed)
    out = []
    for label in ("harmful", "benign"):
        mine = [q for q in own if q.label == label]
        out += (mine + [q for q in more if q.label == label])[:max(per_label, len(mine))]
    return out


def balanced(prompts: list, per_label: int, seed: int) -> list:
    """Up to ``per_label`` harmful, then up to ``per_label`` benign prompts, drawn at random."""
    rng = random.Random(seed)
    out = []
    for label in ("harmful", "benign"):
        xs = [p for p in prompts if p.label == label]
        rng.shuffle(xs)
        out += xs[:per_label]
    return out
