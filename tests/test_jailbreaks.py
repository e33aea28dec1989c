"""Jailbreak templates: the train/eval split, the one fill (training pools and evaluation attacks alike), and the
evaluation attacks on an eval set's items."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from cada.data import benchmarks as B
from cada.data import jailbreaks as J
from cada.data import pools as P
from cada.data.decontam import CONTAINMENT_THRESHOLD, OverlapIndex, normalize, word_shingles
from cada.errors import CadaError
from cada.records import EvalItem, PoolPrompt

REQUEST = "Describe the sentinel request 7f3c."
# evaluation templates whose slot ("[PUT YOUR QUESTION HERE]", "[Your prompt here]" twice) the evaluation fill used
# to miss (it knew four literal spellings): it appended the request after the template and left the slot in
SLOT_MISSED_BEFORE = {"jb-d450afe548", "jb-9392eb9184", "jb-72f646704e"}
# training templates that repeat their slot (a table of four personas; a how-to quoting its prompt twice)
MULTI_SLOT = {"jb-70c25b5cf3", "jb-fda4358ba9"}


@pytest.fixture(scope="module")
def templates() -> list[str]:
    return J.load_jailbreak_templates()


def _settings(**kw) -> SimpleNamespace:
    """An eval set's settings, duck-typed (the attributes ``EvalSet`` has)."""
    base = dict(name="strongreject", benchmark=None, file=None, prompt_column="prompt", reference_column=None,
                kind=None, limit=None, attacks=[], templates=2, attack_file=None, attack_column="prompt")
    return SimpleNamespace(**{**base, **kw})


# --- the split -----------------------------------------------------------------------------------

def test_jailbreak_split_disjoint_stable_and_clean(templates):
    train, held = J.jailbreak_split(templates)
    shuffled = list(templates) + templates[:40]
    random.Random(3).shuffle(shuffled)
    assert J.jailbreak_split(shuffled) == (train, held)
    assert not {normalize(t) for t in train} & {normalize(t) for t in held}
    assert 0.12 <= len(held) / (len(train) + len(held)) <= 0.3
    assert OverlapIndex(held).find(train) == []
    # nor does a training template contain most of an evaluation one (or the other way round)
    held_sh = [word_shingles(h) for h in held]
    for t in train:
        mine = word_shingles(t)
        assert all(len(mine & h) < CONTAINMENT_THRESHOLD * min(len(mine), len(h)) for h in held_sh), t[:80]
    # templates carrying working harmful content are not shipped, and skipped if a data_dir holds them
    assert not {J.template_id(t) for t in templates} & set(J.EXCLUDED_TEMPLATES)
    # a template's side never depends on the other templates
    assert J.jailbreak_split(held[:5])[1] == held[:5]
    assert sorted(t for _, t in J.eval_templates()) == sorted(held)  # the evaluation attacks' templates


# --- the one fill --------------------------------------------------------------------------------

def test_wrap_fills_slots_or_appends():
    filled = J.fill_template("Answer as FreeBot: [INSERT PROMPT HERE\\]. Stay in role.", "REQ")
    assert filled == "Answer as FreeBot: REQ. Stay in role."
    assert J.fill_template("Q: {prompt}", "REQ") == "Q: REQ"
    assert J.fill_template("Say <prompt> now", "REQ") == "Say REQ now"
    never = "Never include [insert x] in replies."
    assert J.fill_template(never, "REQ") == f"{never}\n\nREQ"
    assert J.fill_template("Answer: [PUT YOUR QUESTION HERE]", "REQ") == "Answer: REQ"
    assert J.fill_template("Answer: [Your prompt here] now", "REQ") == "Answer: REQ now"


def test_evaluation_attacks_put_the_request_where_the_slot_is():
    """The evaluation attacks used a fill of their own that missed these templates' slots."""
    named = J.eval_templates()
    by_id = {J.template_id(t): (name, t) for name, t in named}
    assert SLOT_MISSED_BEFORE <= by_id.keys()
    item = EvalItem(id="x-0", prompt=REQUEST, kind="harmful")
    attacked = {it.attack: it.prompt for it in B.wrap([item], ["inthewild"], templates=len(named))}
    assert len(attacked) == len(named)
    for jid in sorted(SLOT_MISSED_BEFORE):
        name, t = by_id[jid]
        [slot] = J.SLOT.finditer(t)
        assert attacked[name] == (t[:slot.start()] + REQUEST + t[slot.end():]).strip(), jid
        assert attacked[name].count(REQUEST) == 1 and not J.SLOT.search(attacked[name]), jid


def test_training_and_evaluation_fills_agree_on_every_shipped_template(templates, monkeypatch):
    every = [(f"t-{i}", t) for i, t in enumerate(sorted({t.strip() for t in templates}))]
    monkeypatch.setattr(B, "eval_templates", lambda limit=None: every[:limit] if limit else every)
    item = EvalItem(id="x-0", prompt=REQUEST, kind="harmful")
    evaluation = [it.prompt for it in B.wrap([item], ["inthewild"], templates=len(every))]
    pool = [PoolPrompt(id="x-0001", prompt=REQUEST, base_prompt=REQUEST, label="harmful", category="none",
                       source="user")]
    training = [P.wrap_in_jailbreaks(pool, [t], 1.0, seed=0)[0].prompt for _, t in every]
    assert len(evaluation) == len(training) == len(every)
    assert [n for (n, _), a, b in zip(every, evaluation, training) if a != b] == []


def test_every_shipped_template_gets_the_request_where_its_slot_is(templates):
    """Into the slot where the template has one (each occurrence), after the template where it has none; no slot
    spelling the old evaluation fill knew is left unfilled."""
    evals = {J.template_id(t) for _, t in J.eval_templates()}
    multi, slotted = set(), 0
    for t in sorted({t.strip() for t in templates}):
        slots = J.SLOT.findall(t)
        filled = J.fill_template(t, REQUEST)
        for literal in ("[INSERT PROMPT HERE]", "{prompt}", "[PROMPT]", "<PROMPT>"):
            assert literal not in filled, J.template_id(t)
        if not slots:
            assert filled == f"{t.rstrip()}\n\n{REQUEST}", J.template_id(t)
            continue
        slotted += 1
        assert filled == J.SLOT.sub(REQUEST, t).strip() and not J.SLOT.search(filled), J.template_id(t)
        assert filled.count(REQUEST) == len(slots), J.template_id(t)
        if len(slots) > 1:
            multi.add(J.template_id(t))
    assert slotted > 100
    # the request fills each repeated slot, as in the training pools so far; every evaluation template gets it once
    assert multi == MULTI_SLOT and not multi & evals


# --- an eval set's items -------------------------------------------------------------------------

def test_eval_items_spread_limit_and_attack():
    base = B.spread_over_categories(B.load_benchmark("strongreject"))[:4]
    assert len({it.category for it in base}) == 4  # one of each of the first four categories
    items = B.eval_items(_settings(limit=4, attacks=["inthewild", "prefix_injection"], templates=2))
    names = [n for n, _ in J.eval_templates(2)]
    assert [it.id for it in items] == [f"{b.id}@{a}" for b in base for a in [*names, "prefix_injection"]]
    assert items[0].prompt == J.fill_template(J.eval_templates(1)[0][1], base[0].prompt)
    assert items[2].prompt == J.PREFIX_INJECTION.format(prompt=base[0].prompt)
    assert all(it.meta["base_prompt"] in it.prompt and it.kind == "harmful" for it in items)
    assert B.eval_items(_settings(name="gsm8k", limit=5)) == B.load_benchmark("gsm8k")[:5]  # no categories
    with pytest.raises(CadaError, match="a file needs a kind"):
        B.eval_items(_settings(name="mine", file="mine.csv"))
