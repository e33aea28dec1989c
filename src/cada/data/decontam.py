"""Decontamination: every check that keeps evaluation prompts (and held-back ones) out of training data.

Two prompts are near-duplicates when their content-word sets (function words such as "how do I" left out) or
their character 4-gram sets overlap strongly (Jaccard similarity at or above a threshold). Candidate pairs come from
an inverted index over words, so checking thousands of prompts against thousands takes seconds.

**Overlap**: every pool prompt (its base request and its wrapped form) is checked against every evaluation prompt
(:func:`evaluation_prompts`) with :class:`OverlapIndex`; matches are removed and reported. Reworded evaluation
requests, which the lexical index misses, are caught by sentence-embedding similarity (:func:`drop_paraphrases`),
and jailbreak templates that contain most of another by shared 8-word runs (:func:`contained`).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cada.paths import cada_home
from cada.records import PoolPrompt
from cada.spec.schema import Spec

WORD_THRESHOLD = 0.5
CHAR_THRESHOLD = 0.6
# words left out of the word overlap: on short requests they dominate it ("How do I pick a lock?" and "How do I
# carve a turkey?" share half their words and nothing else); a text made of them only keeps them all
STOPWORDS = frozenset("""a an the i me my mine myself you your yours we us our they them their he him his she her
it its someone somebody something anyone anything one is are was were be been being am do does did doing done can
could would should will shall may might must have has had having how what where when why which who whom whose that
this these those there here to of in on at for from with by about into onto out up down over as and or but if so
than then too very just not no s t d ll m re ve""".split())


def normalize(text: str) -> str:
    """Lower-case, punctuation to spaces, whitespace folded.

    >>> normalize("  How do I *stop* a process?\\n")
    'how do i stop a process'
    """
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def _shingles(text: str, n: int = 4) -> frozenset[str]:
    return frozenset(text[i:i + n] for i in range(max(1, len(text) - n + 1)))


def _content(normalized: str) -> frozenset[str]:
    """The content words of a normalised text (all its words when it has no other).

    >>> sorted(_content("how do i pick a lock"))
    ['lock', 'pick']
    """
    words = frozenset(normalized.split())
    return (words - STOPWORDS) or words


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def fingerprint(text: str) -> str:
    """A short, stable stand-in for an evaluation prompt in reports (the prompt itself stays in its benchmark).

    >>> fingerprint("any prompt")[:7]
    'sha256:'
    """
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Match:
    index: int          # position in the checked texts
    reference: str      # the reference (evaluation) text it matches
    kind: str           # "exact" | "near" (and "contains", "paraphrase" from the checks below)
    similarity: float


class OverlapIndex:
    """An index of reference texts (e.g. every evaluation prompt) to check other texts against."""

    def __init__(self, references: Iterable[str], word_threshold: float = WORD_THRESHOLD,
                 char_threshold: float = CHAR_THRESHOLD):
        self.word_threshold, self.char_threshold = word_threshold, char_threshold
        self.refs: list[str] = []
        self._norm: list[str] = []
        self._words: list[frozenset[str]] = []
        self._exact: dict[str, int] = {}
        self._postings: dict[str, list[int]] = defaultdict(list)
        for ref in references:
            n = normalize(ref)
            if not n:
                continue
            i = len(self.refs)
            self.refs.append(ref)
            self._norm.append(n)
            words = _content(n)
            self._words.append(words)
            self._exact.setdefault(n, i)
            for w in words:
                self._postings[w].append(i)

    def __len__(self) -> int:
        return len(self.refs)

    def match(self, text: str) -> Match | None:
        """The strongest overlap of ``text`` with any reference, or None."""
        n = normalize(text)
        if not n:
            return None
        if n in self._exact:
            return Match(-1, self.refs[self._exact[n]], "exact", 1.0)
        words = _content(n)
        counts: dict[int, int] = defaultdict(int)
        for w in words:
            for i in self._postings.get(w, ()):
                counts[i] += 1
        best: Match | None = None
        chars = None
        for i, shared in sorted(counts.items()):  # by reference index: ties resolve the same in every process
            ref_words = self._words[i]
            wj = shared / (len(words) + len(ref_words) - shared)
            # character 4-grams can only be similar when enough words are shared
            if wj < self.word_threshold and wj < 0.25:
                continue
            sim, ok = wj, wj >= self.word_threshold
            if not ok:
                chars = chars or _shingles(n)
                cj = _jaccard(chars, _shingles(self._norm[i]))
                sim, ok = max(wj, cj), cj >= self.char_threshold
            if ok and (best is None or sim > best.similarity):
                best = Match(-1, self.refs[i], "near", round(sim, 3))
        return best

    def find(self, texts: Sequence[str]) -> list[Match]:
        """Every text that overlaps a reference, with its index in ``texts``."""
        out = []
        for i, t in enumerate(texts):
            m = self.match(t)
            if m is not None:
                out.append(Match(i, m.reference, m.kind, m.similarity))
        return out


# --- containment (long templates) ----------------------------------------------------------------

CONTAINMENT_N, CONTAINMENT_THRESHOLD = 8, 0.5


def word_shingles(text: str, n: int = CONTAINMENT_N) -> frozenset[str]:
    """The ``n``-word runs of a normalised text (the whole text when it is shorter)."""
    words = normalize(text).split()
    return frozenset(" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1)))


def contained(text: str, refs: list[tuple[str, frozenset[str]]]) -> Match | None:
    """A template that shares half of the shorter one's 8-word runs with a reference: one contains (most of) the
    other, e.g. an evaluation template extended into a longer training one, which whole-text Jaccard misses.
    ``refs`` are (reference, its :func:`word_shingles`) pairs."""
    mine = word_shingles(text)
    best = None
    for ref, theirs in refs:
        shared = len(mine & theirs)
        if not shared:
            continue
        share = shared / min(len(mine), len(theirs))
        if share >= CONTAINMENT_THRESHOLD and (best is None or share > best.similarity):
            best = Match(-1, ref, "contains", round(share, 3))
    return best


# --- the evaluation prompts ----------------------------------------------------------------------

def fixed_eval_sets(data_dir: str | Path | None = None) -> dict[str, list[str]]:
    """The prompts of the shipped evaluation benchmarks by set: xstest, strongreject, advbench, gsm8k."""
    from cada.data.sources import csv_column, jsonl_column, required_file, unique_texts  # they import normalize

    sr = [csv_column(required_file(data_dir, "strongreject", f), "forbidden_prompt")
          for f in ("strongreject_dataset.csv", "strongreject_small_dataset.csv")]
    return {
        "xstest": csv_column(required_file(data_dir, "xstest", "xstest_prompts.csv"), "prompt"),
        "strongreject": unique_texts(sr[0] + sr[1]),
        "advbench": csv_column(required_file(data_dir, "advbench", "harmful_behaviors.csv"), "goal"),
        "gsm8k": jsonl_column(required_file(data_dir, "gsm8k", "test.jsonl"), "question"),
    }


def evaluation_prompts(data_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Every evaluation prompt by set: xstest, strongreject, advbench, gsm8k, jailbreak_eval (templates)."""
    from cada.data.jailbreaks import jailbreak_split, load_jailbreak_templates  # it imports this module's index

    return {**fixed_eval_sets(data_dir), "jailbreak_eval": jailbreak_split(load_jailbreak_templates(data_dir))[1]}


class EvalIndex:
    """One overlap index over all evaluation sets that remembers which set each reference came from."""

    def __init__(self, sets: dict[str, list[str]]):
        self.set_of: dict[str, str] = {}
        for name, texts in sets.items():
            for t in texts:
                self.set_of.setdefault(t, name)
        self.index = OverlapIndex(self.set_of)

    def removal(self, id_: str, text: str, source: str) -> dict | None:
        m = self.index.match(text)
        return None if m is None else removal_record(id_, text, source, m, self.set_of[m.reference])


def removal_record(id_: str, text: str, source: str, m: Match, eval_set: str) -> dict:
    """How a removed pool prompt (or training template) is reported."""
    return {"id": id_, "prompt": text, "source": source, "matched": m.reference, "eval_set": eval_set,
            "kind": m.kind, "similarity": m.similarity}


def drop_overlap(items: list, describe: Callable[[Any], tuple[str, str, str]], index: EvalIndex,
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


# --- rewordings (sentence embeddings) ------------------------------------------------------------

_EMBEDDED: dict[str, Any] = {}  # text -> embedding, for this process (a subset of an embedded list is free)


def embed_cached(texts: Sequence[str]):
    """:func:`cada.spec.retrieval.embed`, cached in ``$CADA_HOME/embeddings`` by a hash of the encoder and texts:
    a rebuild with the same texts loads them."""
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
    sims = embed_cached([d[1] for d in described]) @ embed_cached(ref_list).T
    best = sims.argmax(axis=1)
    kept = []
    for it, (id_, text, source), j, row in zip(items, described, best, sims):
        if float(row[j]) >= threshold:
            m = Match(-1, ref_list[int(j)], "paraphrase", round(float(row[j]), 3))
            removed.append(removal_record(id_, text, source, m, refs[ref_list[int(j)]]))
        else:
            kept.append(it)
    return kept


def paraphrase_references(sets: dict[str, list[str]]) -> dict[str, str]:
    """The requests of the :data:`PARAPHRASE_SETS` among ``sets``, each with its set's name."""
    return {t: name for name in PARAPHRASE_SETS for t in sets.get(name, ())}


# --- the checks ----------------------------------------------------------------------------------

def drop_eval_overlap(prompts: Sequence[PoolPrompt], data_dir: str | Path | None = None, *,
                      sets: dict[str, list[str]] | None = None, paraphrase_refs: dict[str, str] | None = None
                      ) -> tuple[list[PoolPrompt], list[dict]]:
    """``prompts`` without those that overlap an evaluation prompt: exact or near duplicates (of the prompt as
    written and of its request without a jailbreak wrapper) and paraphrases. Returns (kept, removed).

    ``sets`` (name -> texts) defaults to the shipped evaluation sets and ``paraphrase_refs`` (request -> set name)
    to their request-style ones; a study passes its own."""
    sets = sets if sets is not None else evaluation_prompts(data_dir)
    refs = paraphrase_refs if paraphrase_refs is not None else paraphrase_references(sets)
    index, removed = EvalIndex(sets), []
    kept = drop_overlap(list(prompts), lambda p: (p.id, p.prompt, p.source), index, removed)
    wrapped = [p for p in kept if p.base_prompt != p.prompt]  # the others were just checked as written
    clean = {p.id for p in drop_overlap(wrapped, lambda p: (p.id, p.base_prompt, p.source), index, removed)}
    kept = [p for p in kept if p.base_prompt == p.prompt or p.id in clean]
    kept = drop_paraphrases(kept, lambda p: (p.id, p.base_prompt, p.source), refs, removed)
    return kept, removed


def drop_near_heldout(train: Sequence[PoolPrompt], held: Sequence[PoolPrompt],
                      threshold: float = PARAPHRASE_THRESHOLD) -> tuple[list[PoolPrompt], int]:
    """``train`` without prompts whose request is an exact or near duplicate of a held-back request, or a rewording
    of one (sentence-embedding cosine at or above ``threshold``), and how many were dropped: the same tests as the
    evaluation overlap (:class:`OverlapIndex`, then :func:`drop_paraphrases`)."""
    if not held or not train:
        return list(train), 0
    index = OverlapIndex([p.base_prompt for p in held])
    keep = [p for p in train if index.match(p.base_prompt) is None]
    refs = {p.base_prompt: "heldout" for p in held}
    keep = drop_paraphrases(keep, lambda p: (p.id, p.base_prompt, p.source), refs, [], threshold)
    return keep, len(train) - len(keep)


def spec_eval_overlap(spec: Spec, data_dir: str | Path | None = None, threshold: float = 0.7) -> list[dict]:
    """The precedents whose request overlaps a shipped evaluation prompt: exactly, nearly, or reworded (cosine at or
    above ``threshold``, stricter than for pool prompts: a case sits in the prompt of every ``cases`` answer).
    One dict per case: ``case``, ``eval_set``, ``kind``, ``similarity``."""
    sets = evaluation_prompts(data_dir)
    removed: list[dict] = []
    describe = lambda c: (c.id, c.request, "spec")  # noqa: E731
    rest = drop_overlap(list(spec.cases), describe, EvalIndex(sets), removed)
    drop_paraphrases(rest, describe, paraphrase_references(sets), removed, threshold)
    return [{"case": r["id"], "eval_set": r["eval_set"], "kind": r["kind"], "similarity": r["similarity"]}
            for r in removed]
