"""Exact and near-duplicate overlap between texts, used to keep evaluation prompts out of training data.

Two prompts are near-duplicates when their content-word sets (function words such as "how do I" left out) or
their character 4-gram sets overlap strongly (Jaccard similarity at or above a threshold). Candidate pairs come from an inverted index over words, so checking
thousands of prompts against thousands takes seconds.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
    import hashlib

    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Match:
    index: int          # position in the checked texts
    reference: str      # the reference (evaluation) text it matches
    kind: str           # "exact" | "near"
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
