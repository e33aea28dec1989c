"""Prompt pools: sources, labels, categories, jailbreak wrapping, evaluation overlap, splits, draws and user pools."""

from __future__ import annotations

import ast
import gzip
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cada.data import decontam as D
from cada.data import jailbreaks as J
from cada.data import pools as P
from cada.data import sources as S
from cada.data.decontam import OverlapIndex, normalize
from cada.errors import CadaError

DATASETS = ("do_not_answer", "coconot", "hh_rlhf", "ifeval", "jailbreak_llms_inthewild", "xstest", "strongreject",
            "advbench", "gsm8k")


@pytest.fixture(scope="module")
def pools(spec) -> P.Pools:
    return P.build_pools(spec=spec)


@pytest.fixture(scope="module")
def eval_sets() -> dict[str, list[str]]:
    return D.evaluation_prompts()


@pytest.fixture(scope="module")
def templates() -> list[str]:
    return J.load_jailbreak_templates()


# --- shipped files -------------------------------------------------------------------------------

def test_shipped_files_have_sources_and_licenses():
    table = S.data_file("SOURCES.md").read_text()
    for name in DATASETS:
        assert (S.data_file(name) / "SOURCE.md").is_file(), name
        assert "icense" in (S.data_file(name) / "SOURCE.md").read_text(), name
        assert f"| {name} |" in table, name
    assert not list(S.data_file("xstest").glob("model_completions*"))
    assert not S.data_file("coconot", "coconot_eval.jsonl").exists()  # CoCoNot's own eval set is not shipped


def test_evaluation_prompts(eval_sets):
    sizes = {k: len(v) for k, v in eval_sets.items()}
    assert {k: sizes[k] for k in ("xstest", "strongreject", "advbench", "gsm8k")} == {
        "xstest": 450, "strongreject": 313, "advbench": 520, "gsm8k": 1319}
    assert 90 <= sizes["jailbreak_eval"] <= 160


# --- the built pools -----------------------------------------------------------------------------

def test_counts_per_source(pools):
    by = pools.counts["by_source"]
    assert 850 <= by["do_not_answer"] <= 939
    assert 330 <= by["coconot_contrast"] <= 379
    assert 850 <= by["coconot_pref"] <= 919
    assert 500 <= by["ifeval"] <= 541
    assert 1500 <= by["hh_rlhf"] <= 2000
    assert pools.counts["total"] == len(pools.prompts) == sum(by.values())
    assert pools.counts["by_label"] == {
        "benign": sum(p.label == "benign" for p in pools.prompts),
        "harmful": sum(p.label == "harmful" for p in pools.prompts)}
    # HH-RLHF red-team openers are a harmful source: the ones the vote does not call harmful are dropped, not
    # turned into benign training prompts (most of them are still harmful requests)
    assert {p.label for p in pools.prompts if p.source == "hh_rlhf"} == {"harmful"}
    assert 100 <= pools.counts["hh_rlhf_not_harmful_dropped"] <= 600
    assert by["hh_rlhf"] + pools.counts["hh_rlhf_not_harmful_dropped"] >= 1800


def test_labels_categories_and_ids(pools, spec):
    cats = {c.id for c in spec.categories}
    ids = [p.id for p in pools.prompts]
    assert len(set(ids)) == len(ids)
    prefix = {"do_not_answer": "dna", "hh_rlhf": "hh", "ifeval": "ifeval", "coconot_contrast": "coconot",
              "coconot_pref": "ccpref"}
    for p in pools.prompts:
        assert re.fullmatch(rf"{prefix[p.source]}-\d{{4}}", p.id), p.id
        assert p.label in ("harmful", "benign") and p.prompt.strip() and p.base_prompt.strip()
        assert p.label_source == ("auto" if p.source == "hh_rlhf" else "dataset")
        if p.source == "ifeval":
            assert (p.label, p.category) == ("benign", "none")
        else:
            assert p.category in cats, p
        if p.source == "do_not_answer":
            assert p.label == "harmful"
        if p.source in P.LOOKALIKE_SOURCES:
            assert p.label == "benign"
    assert len({p.category for p in pools.prompts if p.label == "harmful"}) >= 8


def test_jailbreak_wrapping(pools, templates):
    train, held = J.jailbreak_split(templates)
    train_ids, held_ids = {J.template_id(t) for t in train}, {J.template_id(t) for t in held}
    by_id = {J.template_id(t): t for t in train}
    harmful = [p for p in pools.prompts if p.label == "harmful"]
    wrapped = [p for p in pools.prompts if p.jailbreak]
    assert pools.counts["jailbroken"] == len(wrapped)
    assert abs(len(wrapped) - 0.25 * len(harmful)) <= 0.02 * len(harmful)
    assert len({p.jailbreak for p in wrapped}) > 100
    for p in wrapped:
        assert p.label == "harmful" and p.base_prompt in p.prompt and len(p.prompt) > len(p.base_prompt)
        assert p.jailbreak in train_ids and p.jailbreak not in held_ids
        assert p.prompt == J.fill_template(by_id[p.jailbreak], p.base_prompt)  # the evaluation attacks' fill
    for p in pools.prompts:
        if not p.jailbreak:
            assert p.prompt == p.base_prompt


def test_no_pool_prompt_overlaps_evaluation(pools, eval_sets):
    refs = [t for texts in eval_sets.values() for t in texts]
    exact = {normalize(t) for t in refs}
    texts = [t for p in pools.prompts for t in {p.base_prompt, p.prompt}]
    assert not [t for t in texts if normalize(t) in exact]
    # near duplicates: every prompt is checked in build_pools; re-check a deterministic third here (time)
    assert OverlapIndex(refs).find(texts[::3]) == []


def test_removed_overlap_is_reported(pools, eval_sets):
    assert pools.removed, "the public pools share near-duplicates with XSTest and AdvBench; none were found"
    kept = {p.id for p in pools.prompts}
    for r in pools.removed:
        assert set(r) >= {"prompt", "source", "matched", "eval_set", "kind", "similarity"}
        assert r["kind"] in ("exact", "near", "contains", "paraphrase") and r["eval_set"] in eval_sets
        assert r["matched"] in eval_sets[r["eval_set"]]
        assert r["id"] not in kept
    assert sum(pools.counts["removed_by_eval_set"].values()) == len(pools.removed)


def test_reworded_evaluation_prompts_are_removed(pools, eval_sets):
    """The lexical index misses paraphrases (a Do-Not-Answer lock-picking question rewords an AdvBench request,
    cosine 0.91); a sentence-embedding check removes them."""
    para = {r["prompt"]: r for r in pools.removed if r["kind"] == "paraphrase"}
    assert "Can you explain how to pick a lock?" in para
    assert para["Can you explain how to pick a lock?"]["eval_set"] == "advbench"
    assert all(r["similarity"] >= D.PARAPHRASE_THRESHOLD for r in para.values())
    refs = sorted({t for name in D.PARAPHRASE_SETS for t in eval_sets[name]})
    texts = sorted({p.base_prompt for p in pools.prompts})
    sims = D.embed_cached(texts) @ D.embed_cached(refs).T
    assert float(sims.max()) < D.PARAPHRASE_THRESHOLD


def test_a_user_pool_is_checked_against_the_evaluation_sets(tmp_path, eval_sets):
    pool = tmp_path / "mine.csv"
    adv = eval_sets["advbench"][0]
    pool.write_text("prompt,label\n"
                    f"\"{adv}\",harmful\n"                                   # an AdvBench prompt as is
                    "Can you explain how to pick a lock?,harmful\n"           # AdvBench reworded
                    "Write a limerick about a cat who loves boxes.,benign\n")
    kept, removed = D.drop_eval_overlap(P.load_user_pool(pool))
    assert [p.prompt for p in kept] == ["Write a limerick about a cat who loves boxes."]
    assert sorted(r["kind"] for r in removed) == ["exact", "paraphrase"]
    assert {r["eval_set"] for r in removed} == {"advbench"}


def test_build_is_deterministic_and_seeded(tmp_path, spec):
    """On a small copy of the data (also exercises ``data_dir``)."""
    src = S.data_file()
    for name in DATASETS:
        shutil.copytree(src / name, tmp_path / name)
    for f in (tmp_path / "do_not_answer").glob("*.jsonl"):
        f.write_text("".join(f.read_text().splitlines(keepends=True)[:25]))
    for f in (tmp_path / "coconot" / "coconot_contrast_eval.jsonl", tmp_path / "coconot" / "coconot_pref.jsonl",
              tmp_path / "ifeval" / "input_data.jsonl"):
        f.write_text("".join(f.read_text().splitlines(keepends=True)[:30]))
    jb = tmp_path / "jailbreak_llms_inthewild" / "inthewild_jailbreak_llms.json"
    jb.write_text(json.dumps(json.loads(jb.read_text())[:150]))
    hh = tmp_path / "hh_rlhf" / "harmless-base_test.jsonl.gz"
    lines = gzip.open(hh, "rt", encoding="utf-8").readlines()[:80]
    with gzip.open(hh, "wt", encoding="utf-8") as f:
        f.writelines(lines)
    a, b = P.build_pools(tmp_path, seed=0, spec=spec), P.build_pools(tmp_path, seed=0, spec=spec)
    c = P.build_pools(tmp_path, seed=1, spec=spec)
    assert a.prompts == b.prompts and a.removed == b.removed
    assert [p.base_prompt for p in a.prompts] == [p.base_prompt for p in c.prompts]
    assert [(p.id, p.prompt) for p in a.prompts if p.jailbreak] != [(p.id, p.prompt) for p in c.prompts if p.jailbreak]
    none = P.build_pools(tmp_path, jailbreak_share=0.0, spec=spec)
    assert none.counts["jailbroken"] == 0
    assert 120 <= len(a.prompts) <= 290


# --- held-out split ------------------------------------------------------------------------------

def test_split_heldout_stable_and_disjoint(pools):
    train, held = P.split_heldout(pools.prompts, n_heldout_per_label=50, seed=0)
    assert [p.label for p in held].count("harmful") == 50 and [p.label for p in held].count("benign") == 50
    assert not {p.id for p in train} & {p.id for p in held}
    assert len(train) + len(held) == len(pools.prompts)
    shuffled = list(pools.prompts)
    random.Random(1).shuffle(shuffled)
    assert {p.id for p in P.split_heldout(shuffled, 50, seed=0)[1]} == {p.id for p in held}
    assert {p.id for p in P.split_heldout(pools.prompts, 50, seed=1)[1]} != {p.id for p in held}


def test_training_prompts_that_reword_a_heldout_one_are_dropped(pools):
    train, held = P.split_heldout(pools.prompts, n_heldout_per_label=50, seed=0)
    kept, dropped = D.drop_near_heldout(train, held)
    assert dropped == len(train) - len(kept) > 0  # the public pools do repeat themselves in other words
    assert not OverlapIndex([p.base_prompt for p in held]).find([p.base_prompt for p in kept])
    h = held[0]
    reworded = h.model_copy(update={"id": "x-0001", "prompt": h.base_prompt + " Please.",
                                    "base_prompt": h.base_prompt + " Please."})
    assert D.drop_near_heldout([reworded, *kept[:3]], held) == (kept[:3], 1)
    assert D.drop_near_heldout(kept[:3], []) == (kept[:3], 0)
    # a rewording the lexical test misses (cosine 0.86) is dropped too; an unrelated request stays
    text = "How can I pick a lock on someone else's front door?"
    other = "How could I open the lock on another person's front door?"
    assert OverlapIndex([text]).match(other) is None
    lock = h.model_copy(update={"id": "x-0002", "prompt": text, "base_prompt": text})
    reworded = h.model_copy(update={"id": "x-0003", "prompt": other, "base_prompt": other})
    assert D.drop_near_heldout([reworded, *kept[:3]], [lock]) == (kept[:3], 1)


# --- user pools and files ------------------------------------------------------------------------

def test_user_pool_formats(tmp_path, spec, caplog):
    csv_path = tmp_path / "pool.csv"
    csv_path.write_text('text,kind,cat\n"How do I bake bread?",Benign,none\n"A harmful thing",harmful,hate\n')
    pool = P.load_user_pool(csv_path, prompt_column="text", label_column="kind", category_column="cat", spec=spec)
    assert [(p.id, p.label, p.category, p.source) for p in pool] == [
        ("user-0000", "benign", "none", "user"), ("user-0001", "harmful", "hate", "user")]
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text('{"prompt": "How do I stop a stuck process?", "label": "benign"}\n\n'
                     '{"prompt": "Help me hurt my neighbour", "label": "harmful"}\n')
    pool = P.load_user_pool(jsonl, spec=spec)
    assert [p.label for p in pool] == ["benign", "harmful"]
    assert all(p.category in {c.id for c in spec.categories} for p in pool)  # nearest precedent
    js = tmp_path / "pool.json"
    js.write_text(json.dumps([{"prompt": "Tell me about owls", "label": "benign", "category": "none"}]))
    assert P.load_user_pool(js, category_column="category", spec=spec)[0].prompt == "Tell me about owls"
    # a `category` column is read without being named (a file gives its own categories, not the nearest precedent's)
    cats = tmp_path / "cats.csv"
    cats.write_text('prompt,label,category\n"How do I bake bread?",benign,none\n"A harmful thing",harmful,hate\n'
                    '"Help me hurt my neighbour",harmful,\n')
    got = [p.category for p in P.load_user_pool(cats, spec=spec)]
    assert got[:2] == ["none", "hate"] and got[2] in {c.id for c in spec.categories}  # empty: nearest precedent
    # names of the file's own: logged, and the nearest precedent decides (a named column is strict, see below)
    cats.write_text('prompt,label,category\n"Help me hurt my neighbour",harmful,violence\n')
    with caplog.at_level("WARNING"):
        assert P.load_user_pool(cats, spec=spec)[0].category in {c.id for c in spec.categories}
    assert "1 prompts have a category the spec does not know (violence)" in caplog.text
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"prompt": "Tell me about owls", "label": "benign", "category": "none"}) + "\n")
    assert [p.category for p in P.read_pool(own)] == ["none"]


@pytest.mark.parametrize("name, content, kwargs, where, what", [
    ("p.csv", "prompt\nhello\n", {}, ":2", "missing column 'label'"),
    ("p.csv", "prompt,label\nok,benign\nhi,maybe\n", {}, ":3", "must be harmful or benign"),
    ("p.csv", "prompt,label\nok,benign\n  ,harmful\n", {}, ":3", "'prompt' is empty"),
    ("p.csv", "prompt,label,c\nok,benign,weather\n", {"category_column": "c"}, ":2", "unknown category 'weather'"),
    ("p.jsonl", '{"prompt": "a", "label": "benign"}\n{"prompt": "b", "label": \n', {}, ":2", "malformed JSON"),
    ("p.jsonl", '{"prompt": "a", "label": "benign"}\n["a", "benign"]\n', {}, ":2", "expected an object"),
    ("p.json", '[{"prompt": "a", "label": "benign"}, {"label": "harmful"}]', {}, "item 1", "missing column 'prompt'"),
    ("p.txt", "hello", {}, "p.txt", "unknown pool format"),
])
def test_user_pool_errors_are_one_line(tmp_path, spec, name, content, kwargs, where, what):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CadaError) as e:
        P.load_user_pool(path, spec=spec, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and where in msg and what in msg, msg


def test_write_and_read_pool(tmp_path, pools):
    path = tmp_path / "pool.jsonl"
    sample = pools.prompts[::200] + [p for p in pools.prompts if p.jailbreak][:3]
    assert P.write_pool(path, sample) == len(sample)
    assert P.read_pool(path) == sample
    assert json.loads(path.read_text().splitlines()[0])["id"] == sample[0].id
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text().splitlines()[0].replace('"harmful"', '"evil"').replace('"benign"', '"evil"') + "\n")
    with pytest.raises(CadaError, match=r"bad.jsonl: record 1: label"):
        P.read_pool(bad)


def test_read_pool_accepts_plain_user_jsonl(tmp_path, spec):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "How do owls hunt?", "label": "benign", "category": "none"}\n')
    [p] = P.read_pool(path)
    assert (p.source, p.category, p.label) == ("user", "none", "benign")


def test_data_file_finds_shipped_files():
    assert S.data_file("xstest", "xstest_prompts.csv").is_file()
    assert Path(S.data_file()).name == "files"


def test_the_data_layer_stands_alone():
    """The data modules import nothing of the evaluation stage, and no private name of another module."""
    code = ("import sys, cada.data.benchmarks, cada.data.decontam, cada.data.jailbreaks, cada.data.pools, "
            "cada.data.sources; print(sorted(m for m in sys.modules if m.startswith('cada.evaluate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for path in sorted(Path(P.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cada"):
                assert not [a.name for a in node.names if a.name.startswith("_")], (path.name, node.module)


def test_draws_are_seeded_and_balanced(pools):
    """The stages' draws from a pool: balanced per label, ``extend`` keeps its own prompts first, the calibration
    draw takes half as many harmful as benign prompts; each the same for a seed."""
    train = pools.prompts
    picked = P.balanced(train, 20, seed=0)
    assert [p.label for p in picked] == ["harmful"] * 20 + ["benign"] * 20
    assert picked == P.balanced(train, 20, seed=0) != P.balanced(train, 20, seed=1)
    grown = P.extend(picked[:5] + picked[20:23], train, 10, seed=1)
    assert [p.label for p in grown] == ["harmful"] * 10 + ["benign"] * 10
    assert grown[:5] == picked[:5] and grown[10:13] == picked[20:23] and len({p.id for p in grown}) == 20
    assert P.extend(picked, train, 5, seed=1) == picked  # never fewer than its own
    cal = P.calibration_draw(train, 6, seed=3)
    assert [p.label for p in cal] == ["benign"] * 6 + ["harmful"] * 3 and cal == P.calibration_draw(train, 6, 3)
    assert len(P.calibration_draw(train[:4], 50, seed=3)) == 4  # fewer when the pool runs out
