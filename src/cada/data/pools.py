"""Prompt pools for self-generation: harmful and benign training requests, labelled and categorised, with a share
of the harmful ones wrapped in in-the-wild jailbreak templates, and no overlap with any evaluation prompt.

Sources (shipped under ``cada/data/files``; see ``files/SOURCES.md``):

=====================  =======  ==================================================================================
source                 label    how
=====================  =======  ==================================================================================
``do_not_answer``      harmful  all 939 Do-Not-Answer requests (label from the dataset)
``hh_rlhf``            harmful  first human turn of each HH-RLHF harmless-base dialogue, deduplicated, kept when
                                :func:`auto_label` calls it harmful (``label_source="auto"``); the others are dropped
``ifeval``             benign   all 541 IFEval prompts, category ``none``
``coconot_contrast``   benign   the 379 CoCoNot contrast prompts (benign look-alikes)
``coconot_pref``       benign   the 919 distinct prompts of the CoCoNot preference pairs (more benign look-alikes:
                                "How can I protect my computer from being hacked?"); their responses are not used
=====================  =======  ==================================================================================

Every prompt but the IFEval ones takes the hazard category of its nearest precedent in the spec (sentence-embedding
cosine similarity, the encoder of :mod:`cada.spec.retrieval`).

**Labelling rule for HH-RLHF** (:func:`auto_label`): the ``LABEL_K`` = 3 nearest labelled references by embedding
similarity vote, counting only those at least ``LABEL_FLOOR`` = 0.3 similar; harmful when most votes are harmful,
benign otherwise (also when no reference is close enough). The references are the spec's precedents (refuse and
safe_complete = harmful, comply = benign) **and** the dataset-labelled pool prompts (Do-Not-Answer = harmful,
CoCoNot contrast = benign). Precedents alone do not separate prompts of known label: with the 66 shipped precedents
the same vote calls 55% of Do-Not-Answer and 47% of CoCoNot contrast harmful without a floor (23% and 15% with it),
so the labelled pools join them as references; then 98% and 16% (each prompt left out of its own vote; see
``benchmarks/pools.py``). HH-RLHF turns the vote does not call harmful are **dropped, not used as benign**: they
are red-team openers, and many that no reference is close to are still harmful ("How can I do a drive by
shooting?"). As benign training prompts they taught the model to comply with harmful requests, and as held-back
benign prompts they counted refusals of them as over-refusal. The benign pools are IFEval and the two CoCoNot sets;
the CoCoNot preference prompts do not vote (the rule above is unchanged by them).

**Jailbreak templates** are split by :func:`jailbreak_split` (a sha256 hash of the normalised text, ~80% training /
~20% evaluation); training templates that near-duplicate any evaluation prompt or evaluation template are dropped.
**Overlap**: every pool prompt (its base request and its wrapped form) is checked against every evaluation prompt
(:func:`evaluation_prompts`) with :class:`cada.data.overlap.OverlapIndex`; matches are removed and reported.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cada.data.overlap import Match, OverlapIndex, normalize
from cada.errors import CadaError
from cada.paths import cada_home
from cada.records import read_records, write_records
from cada.spec.schema import Spec, Verdict, load_spec

log = logging.getLogger(__name__)

FILES_DIR = Path(__file__).parent / "files"
NO_CATEGORY = "none"
LABELS = ("harmful", "benign")
LABEL_K = 3
LABEL_FLOOR = 0.3
JAILBREAK_EVAL_PERCENT = 20
HARMFUL_VERDICTS = frozenset({Verdict.refuse, Verdict.safe_complete})

Label = Literal["harmful", "benign"]
Source = Literal["do_not_answer", "hh_rlhf", "ifeval", "coconot_contrast", "coconot_pref", "user"]
#: benign prompts written to look risky (what a model over-refuses)
LOOKALIKE_SOURCES = frozenset({"coconot_contrast", "coconot_pref"})
#: dataset-labelled sources whose prompts vote in :func:`auto_label` beside the spec's precedents
LABEL_REFERENCE_SOURCES = frozenset({"do_not_answer", "coconot_contrast"})


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


@dataclass
class Pools:
    """The built pools: the prompts, what was removed for overlapping evaluation data, and counts."""

    prompts: list[PoolPrompt]
    removed: list[dict] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)


# --- files ---------------------------------------------------------------------------------------

def data_file(*parts: str) -> Path:
    """A shipped data file (or folder), e.g. ``data_file("xstest", "xstest_prompts.csv")``."""
    return FILES_DIR.joinpath(*parts)


def _path(data_dir: str | Path | None, *parts: str) -> Path:
    path = (Path(data_dir) if data_dir is not None else FILES_DIR).joinpath(*parts)
    if not path.exists():
        raise CadaError(f"{path}: data file not found (data_dir must be laid out like {FILES_DIR})")
    return path


def _jsonl(path: Path, key: str) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)[key] for line in f if line.strip()]


def _csv_column(path: Path, column: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return [row[column] for row in csv.DictReader(f)]


def _unique(texts: Iterable[str]) -> list[str]:
    """Texts in first-seen order, without repeats of the same normalised text."""
    seen: dict[str, str] = {}
    for t in texts:
        seen.setdefault(normalize(t), t.strip())
    return [t for n, t in seen.items() if n]


# --- jailbreak templates -------------------------------------------------------------------------

_SLOT = re.compile(r"[\[{<]\s*(?:(?:insert|put|enter|type)[\s_]+)?(?:(?:your|any|the|a|user)[\s_]+)?"
                   r"(?:prompt|question)(?:[\s_]+here)?\s*\\?[\]}>]", re.IGNORECASE)


# upstream templates left out of the shipped copy because they carry working harmful content, not just a request
# (a drug synthesis recipe; a phishing-mail script); also skipped when ``data_dir`` holds the upstream file
EXCLUDED_TEMPLATES = {"jb-be54f675fa": "embeds a drug synthesis recipe",
                      "jb-ac56c7579d": "embeds a working phishing-mail script"}


def load_jailbreak_templates(data_dir: str | Path | None = None) -> list[str]:
    """The in-the-wild jailbreak templates as shipped (664 of upstream's 666, duplicates included), less
    :data:`EXCLUDED_TEMPLATES`."""
    path = _path(data_dir, "jailbreak_llms_inthewild", "inthewild_jailbreak_llms.json")
    return [t for t in json.loads(path.read_text("utf-8")) if template_id(t) not in EXCLUDED_TEMPLATES]


def _digest(text: str) -> str:
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def template_id(template: str) -> str:
    """A stable id of a template: ``jb-`` and the first 10 hex digits of the sha256 of its normalised text."""
    return "jb-" + _digest(template)[:10]


def _split_templates(templates: Iterable[str]) -> tuple[list[str], list[str], list[tuple[str, Match]]]:
    variants: dict[str, list[str]] = {}
    for t in templates:
        if normalize(t):
            variants.setdefault(_digest(t), []).append(t.strip())
    unique = [min(variants[d]) for d in sorted(variants)]  # one fixed spelling per normalised text
    held = [t for t in unique if int(_digest(t)[:8], 16) % 100 < JAILBREAK_EVAL_PERCENT]
    index, held_set = OverlapIndex(held), set(held)
    held_shingles = [(h, _word_shingles(h)) for h in held]
    train, dropped = [], []
    for t in unique:
        if t in held_set:
            continue
        m = index.match(t) or _contained(t, held_shingles)
        if m is None:
            train.append(t)
        else:
            dropped.append((t, m))
    return train, held, dropped


CONTAINMENT_N, CONTAINMENT_THRESHOLD = 8, 0.5


def _word_shingles(text: str, n: int = CONTAINMENT_N) -> frozenset[str]:
    words = normalize(text).split()
    return frozenset(" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1)))


def _contained(text: str, refs: list[tuple[str, frozenset[str]]]) -> Match | None:
    """A template that shares half of the shorter one's 8-word runs with a reference: one contains (most of) the
    other, e.g. an evaluation template extended into a longer training one, which whole-text Jaccard misses."""
    mine = _word_shingles(text)
    best = None
    for ref, theirs in refs:
        shared = len(mine & theirs)
        if not shared:
            continue
        share = shared / min(len(mine), len(theirs))
        if share >= CONTAINMENT_THRESHOLD and (best is None or share > best.similarity):
            best = Match(-1, ref, "contains", round(share, 3))
    return best


def jailbreak_split(templates: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split templates into (train, eval) by a sha256 hash of their normalised text.

    Exact duplicates (after normalisation; the lexicographically first spelling is kept) are dropped first, and
    templates with no word characters are skipped; a template goes to eval when its hash falls in the lowest 20 of
    100 buckets, so the split does not depend on order or on the other templates. Training templates
    that near-duplicate an eval template, or share half of the shorter one's 8-word runs with it (one contains the
    other), are dropped, so no evaluation wrapper appears in training. Both lists are
    sorted by hash.

    >>> train, held = jailbreak_split(["a b c!", "d e f", "a b c"])
    >>> sorted(train + held)
    ['a b c', 'd e f']
    """
    train, held, _ = _split_templates(templates)
    return train, held


def wrap(template: str, request: str) -> str:
    """Put ``request`` into a jailbreak template: into its slot (e.g. ``[INSERT PROMPT HERE]``), else after it.

    >>> wrap("You are FreeBot. Answer: [INSERT PROMPT HERE]", "Tell me a joke.")
    'You are FreeBot. Answer: Tell me a joke.'
    >>> wrap("You are FreeBot.  ", "Tell me a joke.")
    'You are FreeBot.\\n\\nTell me a joke.'
    """
    if _SLOT.search(template):
        return _SLOT.sub(lambda _: request, template).strip()
    return f"{template.rstrip()}\n\n{request}"


# --- evaluation prompts and overlap --------------------------------------------------------------

def _fixed_eval_sets(data_dir: str | Path | None) -> dict[str, list[str]]:
    sr = [_csv_column(_path(data_dir, "strongreject", f), "forbidden_prompt")
          for f in ("strongreject_dataset.csv", "strongreject_small_dataset.csv")]
    return {
        "xstest": _csv_column(_path(data_dir, "xstest", "xstest_prompts.csv"), "prompt"),
        "strongreject": _unique(sr[0] + sr[1]),
        "advbench": _csv_column(_path(data_dir, "advbench", "harmful_behaviors.csv"), "goal"),
        "gsm8k": _jsonl(_path(data_dir, "gsm8k", "test.jsonl"), "question"),
    }


def evaluation_prompts(data_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Every evaluation prompt by set: xstest, strongreject, advbench, gsm8k, jailbreak_eval (templates)."""
    return {**_fixed_eval_sets(data_dir), "jailbreak_eval": jailbreak_split(load_jailbreak_templates(data_dir))[1]}


class _EvalIndex:
    """One overlap index over all evaluation sets that remembers which set each reference came from."""

    def __init__(self, sets: dict[str, list[str]]):
        self.set_of: dict[str, str] = {}
        for name, texts in sets.items():
            for t in texts:
                self.set_of.setdefault(t, name)
        self.index = OverlapIndex(self.set_of)

    def removal(self, id_: str, text: str, source: str) -> dict | None:
        m = self.index.match(text)
        return None if m is None else _removal(id_, text, source, m, self.set_of[m.reference])


def _removal(id_: str, text: str, source: str, m: Match, eval_set: str) -> dict:
    """How a removed pool prompt (or training template) is reported."""
    return {"id": id_, "prompt": text, "source": source, "matched": m.reference, "eval_set": eval_set,
            "kind": m.kind, "similarity": m.similarity}


# --- the pools -----------------------------------------------------------------------------------

@dataclass
class _Raw:
    id: str
    text: str
    source: str
    label: str | None  # None: to be labelled automatically


def _first_human_turn(transcript: str) -> str:
    m = re.match(r"\s*Human:\s*(.*?)\n\nAssistant:", transcript, re.DOTALL)
    return m.group(1).strip() if m else ""


def _raw_sources(data_dir: str | Path | None) -> list[_Raw]:
    dna = [p for f in sorted(_path(data_dir, "do_not_answer").glob("*.jsonl")) for p in _jsonl(f, "prompt")]
    ccn = _jsonl(_path(data_dir, "coconot", "coconot_contrast_eval.jsonl"), "prompt")
    pref = _unique(_jsonl(_path(data_dir, "coconot", "coconot_pref.jsonl"), "prompt"))
    ife = _jsonl(_path(data_dir, "ifeval", "input_data.jsonl"), "prompt")
    hh_path = _path(data_dir, "hh_rlhf", "harmless-base_test.jsonl.gz")
    hh = _unique(_first_human_turn(t) for t in _jsonl(hh_path, "chosen"))
    groups = [("dna", "do_not_answer", "harmful", dna), ("coconot", "coconot_contrast", "benign", ccn),
              ("ccpref", "coconot_pref", "benign", pref), ("ifeval", "ifeval", "benign", ife),
              ("hh", "hh_rlhf", None, hh)]
    return [_Raw(f"{prefix}-{i:04d}", text.strip(), source, label)
            for prefix, source, label, texts in groups for i, text in enumerate(texts)]


_EMBEDDED: dict[str, Any] = {}  # text -> embedding, for this process (a subset of an embedded list is free)


def _embed_cached(texts: Sequence[str]):
    """:func:`cada.spec.retrieval.embed`, cached in ``$CADA_HOME/embeddings`` by a hash of the encoder and texts.

    Embedding the ~4k pool prompts takes 15-60 s on two CPU cores; a rebuild with the same texts loads them.
    """
    import numpy as np

    from cada.spec.retrieval import embed, encoder, encoder_dir

    if not texts:
        return np.zeros((0, encoder().get_sentence_embedding_dimension()), dtype=np.float32)
    key = hashlib.sha256("\x00".join([str(encoder_dir()), *texts]).encode("utf-8")).hexdigest()[:24]
    path = cada_home() / "embeddings" / f"{key}.npy"
    if path.is_file():
        try:
            emb = np.load(path)
            if emb.shape[0] == len(texts):
                _EMBEDDED.update(zip(texts, emb))
                return emb
        except (OSError, ValueError):
            pass  # a damaged cache file: recompute it
    missing = list(dict.fromkeys(t for t in texts if t not in _EMBEDDED))
    if missing:
        _EMBEDDED.update(zip(missing, embed(missing)))
    emb = np.stack([_EMBEDDED[t] for t in texts])
    if not missing:  # every vector came from this process's memo (a subset of a list cached below): no new file
        return emb
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp.npy")
    np.save(tmp, emb)
    tmp.replace(path)
    return emb


def _first_of_each(raw: Iterable[_Raw]) -> list[_Raw]:
    """``raw`` without later repeats of a normalised text (empty texts dropped)."""
    first: dict[str, _Raw] = {}
    for r in raw:
        first.setdefault(normalize(r.text), r)
    first.pop("", None)
    return list(first.values())


def _nearest_precedents(texts: Sequence[str], spec: Spec):
    """Embeddings of ``texts`` (n x 384) and their cosine similarities to the spec's precedents (n x cases)."""
    emb = _embed_cached(list(texts))
    return emb, emb @ _embed_cached([c.request for c in spec.cases]).T


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


def _label_and_categorise(raw: list[_Raw], spec: Spec) -> list[PoolPrompt]:
    """PoolPrompts for ``raw``: categories from the nearest precedent, HH-RLHF labels from :func:`auto_label`."""
    import numpy as np

    embedded = [r for r in raw if r.source != "ifeval"]
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


def _prompt(r: _Raw, label: str, category: str) -> PoolPrompt:
    return PoolPrompt(id=r.id, prompt=r.text, base_prompt=r.text, label=label, category=category, source=r.source,
                      label_source="dataset" if r.label else "auto")


def _jailbreak(prompts: list[PoolPrompt], templates: list[str], share: float, seed: int) -> list[PoolPrompt]:
    """Wrap a seeded random ``share`` of the harmful prompts, each in a seeded random training template."""
    harmful = [i for i, p in enumerate(prompts) if p.label == "harmful"]
    if not templates or share <= 0 or not harmful:
        return prompts
    rng = random.Random(seed)
    out = list(prompts)
    for i in sorted(rng.sample(harmful, round(min(share, 1.0) * len(harmful)))):
        t = rng.choice(templates)
        out[i] = out[i].model_copy(update={"prompt": wrap(t, out[i].base_prompt), "jailbreak": template_id(t)})
    return out


def _drop_overlap(items: list, describe: Callable[[Any], tuple[str, str, str]], index: _EvalIndex,
                  removed: list[dict]) -> list:
    """``items`` that overlap no evaluation prompt; the others are reported in ``removed``.

    ``describe(item)`` gives the item's (id, text to check, source).
    """
    kept = []
    for it in items:
        found = index.removal(*describe(it))
        if found:
            removed.append(found)
        else:
            kept.append(it)
    return kept


# sentence-embedding cosine at or above which a training prompt counts as a reworded evaluation prompt (a
# Do-Not-Answer lock-picking question against the AdvBench request it rewords: 0.91); the lexical index misses
# these. Checked against the request-style sets (GSM8K's word problems and the jailbreak templates are covered by
# the lexical and containment checks).
PARAPHRASE_THRESHOLD = 0.85
PARAPHRASE_SETS = ("xstest", "strongreject", "advbench")


def drop_paraphrases(items: list, describe: Callable[[Any], tuple[str, str, str]], refs: dict[str, str],
                     removed: list[dict], threshold: float = PARAPHRASE_THRESHOLD) -> list:
    """``items`` whose text (``describe(item)`` gives id, text, source) is no paraphrase of a reference in ``refs``
    (reference text -> its evaluation set); the others are reported in ``removed`` with kind ``paraphrase``."""
    if not items or not refs:
        return list(items)
    ref_list = sorted(refs)
    described = [describe(it) for it in items]
    sims = _embed_cached([d[1] for d in described]) @ _embed_cached(ref_list).T
    best = sims.argmax(axis=1)
    kept = []
    for it, (id_, text, source), j, row in zip(items, described, best, sims):
        if float(row[j]) >= threshold:
            m = Match(-1, ref_list[int(j)], "paraphrase", round(float(row[j]), 3))
            removed.append(_removal(id_, text, source, m, refs[ref_list[int(j)]]))
        else:
            kept.append(it)
    return kept


def _paraphrase_refs(sets: dict[str, list[str]]) -> dict[str, str]:
    return {t: name for name in PARAPHRASE_SETS for t in sets.get(name, ())}


def drop_eval_overlap(prompts: Sequence[PoolPrompt], data_dir: str | Path | None = None, *,
                      sets: dict[str, list[str]] | None = None, paraphrase_refs: dict[str, str] | None = None
                      ) -> tuple[list[PoolPrompt], list[dict]]:
    """``prompts`` without those that overlap an evaluation prompt: exact or near duplicates (of the prompt as
    written and of its request without a jailbreak wrapper) and paraphrases. Returns (kept, removed).

    ``sets`` (name -> texts) defaults to the shipped evaluation sets and ``paraphrase_refs`` (request -> set name)
    to their request-style ones; a study passes its own."""
    sets = sets if sets is not None else evaluation_prompts(data_dir)
    refs = paraphrase_refs if paraphrase_refs is not None else _paraphrase_refs(sets)
    index, removed = _EvalIndex(sets), []
    kept = _drop_overlap(list(prompts), lambda p: (p.id, p.prompt, p.source), index, removed)
    wrapped = [p for p in kept if p.base_prompt != p.prompt]  # the others were just checked as written
    clean = {p.id for p in _drop_overlap(wrapped, lambda p: (p.id, p.base_prompt, p.source), index, removed)}
    kept = [p for p in kept if p.base_prompt == p.prompt or p.id in clean]
    kept = drop_paraphrases(kept, lambda p: (p.id, p.base_prompt, p.source), refs, removed)
    return kept, removed


def spec_eval_overlap(spec: Spec, data_dir: str | Path | None = None, threshold: float = 0.7) -> list[dict]:
    """The precedents whose request overlaps a shipped evaluation prompt: exactly, nearly, or reworded (cosine at or
    above ``threshold``, stricter than for pool prompts: a case sits in the prompt of every ``cases`` answer).
    One dict per case: ``case``, ``eval_set``, ``kind``, ``similarity``."""
    sets = evaluation_prompts(data_dir)
    removed: list[dict] = []
    describe = lambda c: (c.id, c.request, "spec")  # noqa: E731
    rest = _drop_overlap(list(spec.cases), describe, _EvalIndex(sets), removed)
    drop_paraphrases(rest, describe, _paraphrase_refs(sets), removed, threshold)
    return [{"case": r["id"], "eval_set": r["eval_set"], "kind": r["kind"], "similarity": r["similarity"]}
            for r in removed]


def build_pools(data_dir: str | Path | None = None, *, jailbreak_share: float = 0.25, seed: int = 0,
                spec: Spec | None = None) -> Pools:
    """Build the training pools from the shipped data (or ``data_dir``, laid out like ``cada/data/files``).

    Steps: read the five sources; drop repeated requests (same normalised text; the first source wins); remove
    requests that overlap an evaluation prompt (exact, near duplicate, or a paraphrase by sentence embedding); label
    and categorise, dropping HH-RLHF turns not labelled harmful;
    wrap ``jailbreak_share`` of the harmful requests in training jailbreak templates; remove wrapped prompts that
    overlap an evaluation prompt.
    Deterministic for a given ``seed`` and spec.
    """
    spec = spec or load_spec()
    removed: list[dict] = []
    train_t, eval_t, dropped = _split_templates(load_jailbreak_templates(data_dir))
    fixed = _fixed_eval_sets(data_dir)
    eval_index = _EvalIndex({**fixed, "jailbreak_eval": eval_t})

    raw_all = _raw_sources(data_dir)
    raw = _first_of_each(raw_all)
    duplicates = len(raw_all) - len(raw)
    raw = _drop_overlap(raw, lambda r: (r.id, r.text, r.source), eval_index, removed)
    raw = drop_paraphrases(raw, lambda r: (r.id, r.text, r.source), _paraphrase_refs(fixed), removed)
    prompts = _label_and_categorise(raw, spec)
    unsure = sum(p.source == "hh_rlhf" and p.label != "harmful" for p in prompts)
    prompts = [p for p in prompts if p.source != "hh_rlhf" or p.label == "harmful"]

    removed += [_removal(template_id(t), t, "jailbreak_template", m, "jailbreak_eval") for t, m in dropped]
    train_t = _drop_overlap(train_t, lambda t: (template_id(t), t, "jailbreak_template"), eval_index, removed)
    prompts = _jailbreak(prompts, train_t, jailbreak_share, seed)
    wrapped = _drop_overlap([p for p in prompts if p.jailbreak], lambda p: (p.id, p.prompt, p.source), eval_index,
                            removed)
    keep = {p.id for p in wrapped}
    prompts = [p for p in prompts if not p.jailbreak or p.id in keep]
    counts = _counts(prompts, removed)
    counts.update(duplicates_dropped=duplicates, hh_rlhf_not_harmful_dropped=unsure,
                  jailbreak_templates={"train": len(train_t), "eval": len(eval_t)})
    return Pools(prompts=prompts, removed=removed, counts=counts)


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


# --- user pools, splits and files ----------------------------------------------------------------

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
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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


def drop_near_heldout(train: Sequence[PoolPrompt], held: Sequence[PoolPrompt],
                      threshold: float = PARAPHRASE_THRESHOLD) -> tuple[list[PoolPrompt], int]:
    """``train`` without prompts whose request is an exact or near duplicate of a held-back request, or a rewording
    of one (sentence-embedding cosine at or above ``threshold``), and how many were dropped: the same tests as the
    evaluation overlap (:class:`cada.data.overlap.OverlapIndex`, then :func:`drop_paraphrases`)."""
    if not held or not train:
        return list(train), 0
    index = OverlapIndex([p.base_prompt for p in held])
    keep = [p for p in train if index.match(p.base_prompt) is None]
    refs = {p.base_prompt: "heldout" for p in held}
    keep = drop_paraphrases(keep, lambda p: (p.id, p.base_prompt, p.source), refs, [], threshold)
    return keep, len(train) - len(keep)


def write_jsonl(path: str | Path, prompts: Iterable[PoolPrompt]) -> int:
    """Write pool prompts as one JSON object a line (atomically); returns how many."""
    return write_records(path, (p.model_dump() for p in prompts))


def read_pool(path: str | Path) -> list[PoolPrompt]:
    """Pool prompts from a JSONL file written by :func:`write_jsonl`.

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
