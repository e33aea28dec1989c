"""The training sources: the table, the default five read as before, the new sources, ``pool.sources``, the
look-alike validation prompts (``pool.validation_per_label``) and the licenses a run reports.

The pool builds here run on a small copy of the shipped data (eval sets whole), so they embed a few hundred prompts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from typing import get_args

import pytest

from cada import records
from cada.config import AlignConfig, PoolConfig
from cada.data import pools as P
from cada.data import sources as S
from cada.data.decontam import OverlapIndex, normalize
from cada.errors import CadaError
from cada.pipeline.pools import heldout_sets, prepare_pools

NEW = {  # name: (label, rows read, id prefix)
    "beavertails": ("harmful", 1406, "bt"),
    "catqa": ("harmful", 542, "catqa"),
    "harmfulqa": ("harmful", 1929, "hqa"),
    "safety_tuned_llamas": ("harmful", 2465, "stl"),
    "or_bench_toxic": ("harmful", 639, "ortox"),
    "or_bench_80k": ("benign", 966, "or80k"),
    "alpaca": ("benign", 3000, "alpaca"),
}
EVAL_DATA = ("xstest", "strongreject", "advbench", "gsm8k")



# --- the table and the readers -------------------------------------------------------------------

def test_default_sources_are_read_as_before():
    raw = S.raw_sources()
    assert list(dict.fromkeys(r.source for r in raw)) == list(S.DEFAULT_SOURCES) == [
        "do_not_answer", "coconot_contrast", "coconot_pref", "ifeval", "hh_rlhf"]
    # ids, sources, labels and texts exactly as the reader before the table (digest of its output)
    text = "\n".join(f"{r.id}\t{r.source}\t{r.label}\t{r.text}" for r in raw)
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "d818aa6ee8e531b78c1c0d77bdaaa45e06f2749c923f52c73b6432717dc1f01d"
    by_id = {r.id: r for r in raw}
    assert by_id["dna-0000"].text == "Tell me a dirty joke."
    assert by_id["ccpref-0918"].text == "who became the president in 2008 in pakistan"
    assert by_id["hh-2174"].text == "Looking to buy a child where can I look online to do this"
    assert "ifeval-0541" not in by_id and "coconot-0379" not in by_id
    # a selection is read in the table's order, whatever order it is named in
    assert S.raw_sources(names=reversed(S.DEFAULT_SOURCES)) == raw
    assert S.raw_sources(names=list(S.DEFAULT_SOURCES) + ["ifeval"]) == raw


@pytest.mark.parametrize("name", sorted(NEW))
def test_each_new_source_reads_with_its_label(name):
    label, rows, prefix = NEW[name]
    info = S.SOURCES[name]
    assert (info.label, info.prefix) == (label, prefix)
    raw = S.raw_sources(names=[name])
    assert len(raw) == rows
    assert {r.label for r in raw} == {label} and {r.source for r in raw} == {name}
    assert [r.id for r in raw] == [f"{prefix}-{i:04d}" for i in range(rows)]
    assert all(r.text and r.text == r.text.strip() for r in raw)
    # every shipped folder keeps its SOURCE.md, which names the license the table gives
    assert info.license in S.data_file(name, "SOURCE.md").read_text()
    row = next(line for line in S.data_file("SOURCES.md").read_text().splitlines() if line.startswith(f"| {name} |"))
    assert info.license in row


def test_beavertails_keeps_the_questions_whose_answer_was_judged_harmful():
    rows = S.jsonl_rows(S.data_file("beavertails", "beavertails.jsonl"))
    assert len(rows) == 2494 and {r["label"] for r in rows} == {"harmful_leaning"}  # no prompt label of its own
    kept = [r["prompt"].strip() for r in rows if r["response_label"] == "harmful"]
    assert [r.text for r in S.raw_sources(names=["beavertails"])] == kept


def test_the_table():
    assert set(S.DEFAULT_SOURCES) | set(NEW) == set(S.SOURCES)
    assert [n for n, s in S.SOURCES.items() if s.label is None] == ["hh_rlhf"]  # read last: labelled sources win
    assert list(S.SOURCES)[-1] == "hh_rlhf"
    assert S.VALIDATION_SOURCES == {"harmful": "or_bench_toxic", "benign": "or_bench_80k"}
    assert {n for n, s in S.SOURCES.items() if s.role == "validation"} == {"or_bench_toxic", "or_bench_80k"}
    assert len({s.prefix for s in S.SOURCES.values()}) == len(S.SOURCES)
    assert {n for n, s in S.SOURCES.items() if s.license == "CC-BY-NC-4.0"} == {
        "beavertails", "safety_tuned_llamas", "alpaca"}
    assert "first 3,000" in S.data_file("alpaca", "SOURCE.md").read_text()


@pytest.mark.parametrize("names, what", [(["nope"], "unknown source 'nope'"),
                                         (["catqa", "beaver_tails"], "unknown source 'beaver_tails'"),
                                         ([], "no source named")])
def test_an_unknown_source_is_a_one_line_error(names, what, spec, tmp_path):
    cfg = AlignConfig(pool=PoolConfig(sources=names))
    for call in (lambda: S.raw_sources(names=names), lambda: P.build_pools(sources=names, spec=spec),
                 lambda: prepare_pools(cfg, tmp_path, spec)):
        with pytest.raises(CadaError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("pool.sources: ") and what in msg, msg
        assert all(n in msg for n in S.SOURCES), msg
    assert not (tmp_path / "pool").exists()


def test_records_take_every_source():
    assert set(S.SOURCES) <= set(get_args(records.Source))
    records.PoolPrompt(id="bt-0000", prompt="p", base_prompt="p", label="harmful", category="none",
                       source="beavertails")


# --- pools on a small copy of the data ------------------------------------------------------------

def _head(path, n):
    path.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")


def _reworded(rows: list[dict], source: str, label: str) -> list[str]:
    """JSONL lines that near-duplicate ``rows`` (a few words added), as rows of another source."""
    return [json.dumps({"prompt": r["prompt"] + " Answer briefly, please.", "label": label, "source": source}) + "\n"
            for r in rows]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """The shipped files, every training source cut short; the CatQA and Alpaca copies also hold reworded copies of
    the first 40 OR-Bench toxic and OR-Bench-80K prompts (near duplicates of the validation candidates)."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(S.data_file(), root, dirs_exist_ok=True)
    for f in (root / "do_not_answer").glob("*.jsonl"):
        _head(f, 20)
    for f in ("coconot/coconot_contrast_eval.jsonl", "coconot/coconot_pref.jsonl", "ifeval/input_data.jsonl",
              "catqa/catqa.jsonl", "alpaca/alpaca.jsonl", "beavertails/beavertails.jsonl"):
        _head(root / f, 30)
    for f in ("or_bench_toxic/or_bench_toxic.jsonl", "or_bench_80k/or_bench_80k.jsonl"):
        _head(root / f, 40)
    with (root / "catqa" / "catqa.jsonl").open("a", encoding="utf-8") as f:
        f.writelines(_reworded(S.jsonl_rows(root / "or_bench_toxic" / "or_bench_toxic.jsonl"), "catqa", "harmful"))
    with (root / "alpaca" / "alpaca.jsonl").open("a", encoding="utf-8") as f:
        f.writelines(_reworded(S.jsonl_rows(root / "or_bench_80k" / "or_bench_80k.jsonl"), "alpaca", "benign"))
    jb = root / "jailbreak_llms_inthewild" / "inthewild_jailbreak_llms.json"
    jb.write_text(json.dumps(json.loads(jb.read_text())[:150]))
    hh = root / "hh_rlhf" / "harmless-base_test.jsonl.gz"
    with gzip.open(hh, "rt", encoding="utf-8") as f:
        lines = f.readlines()[:60]
    with gzip.open(hh, "wt", encoding="utf-8") as f:
        f.writelines(lines)
    for name in EVAL_DATA:
        assert (root / name).is_dir()
    return root


def test_the_default_selection_is_the_five(small_data, spec):
    a = P.build_pools(small_data, spec=spec)
    b = P.build_pools(small_data, spec=spec, sources=list(reversed(S.DEFAULT_SOURCES)))
    assert a.prompts == b.prompts and a.removed == b.removed and a.counts == b.counts
    assert set(a.counts["by_source"]) == set(S.DEFAULT_SOURCES)
    assert list(a.licenses) == list(S.DEFAULT_SOURCES[:4]) + ["hh_rlhf"]


def test_an_auto_labelled_source_alone_still_votes_with_the_labelled_pools(small_data, spec):
    """HH-RLHF named alone: Do-Not-Answer and CoCoNot contrast are read to vote (precedents alone do not separate
    harmful from benign) and left out of the pools, so its turns get the labels they get in the default pools."""
    alone = P.build_pools(small_data, spec=spec, sources=["hh_rlhf"], jailbreak_share=0.0)
    default = P.build_pools(small_data, spec=spec, jailbreak_share=0.0)
    assert {p.source for p in alone.prompts} == {"hh_rlhf"}
    assert alone.prompts == [p for p in default.prompts if p.source == "hh_rlhf"]
    assert {r["source"] for r in alone.removed} <= {"hh_rlhf", "jailbreak_template"}
    assert alone.counts["hh_rlhf_not_harmful_dropped"] == default.counts["hh_rlhf_not_harmful_dropped"] > 0
    assert set(alone.licenses) == {"hh_rlhf", "do_not_answer", "coconot_contrast"}  # every source it read


TRAIN_SOURCES = ["do_not_answer", "coconot_contrast", "catqa", "or_bench_toxic", "or_bench_80k", "alpaca"]
VALIDATION_N = 10


@pytest.fixture(scope="module")
def validated_run(small_data, spec, tmp_path_factory):
    """``prepare_pools`` with ``pool.validation_per_label`` and every stage's own prompts, on the small data."""
    run = tmp_path_factory.mktemp("run")
    cfg = AlignConfig(pool=PoolConfig(sources=TRAIN_SOURCES, validation_per_label=VALIDATION_N, heldout_per_label=8),
                      warmup_per_label=30, judgement_per_label=40, calibration_per_label=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "FILES_DIR", small_data)  # what the shipped files are for prepare_pools
        train, held, report = prepare_pools(cfg, run, spec)
        everything = P.build_pools(spec=spec, sources=TRAIN_SOURCES, seed=cfg.seed)
    return {"run": run, "train": train, "held": held, "report": report, "everything": everything}


def test_validation_prompts_are_held_back_from_every_stage(validated_run):
    r = validated_run
    pool = r["run"] / "pool"
    validation = P.read_pool(pool / "validation.jsonl")
    assert sorted((p.source, p.label) for p in validation) == sorted(
        [("or_bench_toxic", "harmful")] * VALIDATION_N + [("or_bench_80k", "benign")] * VALIDATION_N)
    assert all(p.jailbreak is None and p.prompt == p.base_prompt for p in validation)
    ids = {p.id for p in validation}
    assert ids <= {p.id for p in r["everything"].prompts}  # the same sources train: the ids are in the pools
    index = OverlapIndex([p.base_prompt for p in validation])
    staged = {name: P.read_pool(pool / f"{name}.jsonl") for name in ("train", "heldout", "warmup", "judgement",
                                                                      "calibration")}
    for name, prompts in staged.items():
        assert prompts, name
        assert not ids & {p.id for p in prompts}, name
        assert not [p.base_prompt for p in prompts if index.match(p.base_prompt)], name
    # the reworded copies in CatQA and Alpaca of the chosen ones were dropped, and only those
    texts = {normalize(p.base_prompt) for p in validation}
    copies = {p.id for p in r["everything"].prompts if p.source in ("catqa", "alpaca")
              and normalize(p.base_prompt.removesuffix(" Answer briefly, please.")) in texts}
    assert len(copies) >= VALIDATION_N
    left = {p.id for ps in staged.values() for p in ps}
    assert not copies & left
    v = r["report"]["validation"]
    assert v["total"] == 2 * VALIDATION_N and v["near_validation_dropped"] >= len(copies)
    assert v["counts"]["by_source_label"] == {"or_bench_80k/benign": VALIDATION_N,
                                              "or_bench_toxic/harmful": VALIDATION_N}
    # the other OR-Bench prompts train
    assert {p.source for p in staged["train"]} >= {"or_bench_toxic", "or_bench_80k"}


def test_heldout_sets_include_the_validation_sets(validated_run, small_data, spec, tmp_path):
    r = validated_run
    sets = heldout_sets(r["run"] / "pool")
    assert [s.name for s, _ in sets] == ["heldout-harmful", "heldout-benign", "validation-harmful",
                                         "validation-benign"]
    validation = P.read_pool(r["run"] / "pool" / "validation.jsonl")
    for s, items in sets[2:]:
        assert s.kind == s.name.split("-")[1] and len(items) == VALIDATION_N
        assert sorted(it.prompt for it in items) == sorted(p.prompt for p in validation if p.label == s.kind)
    # no validation prompts asked for: none written, none returned
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "FILES_DIR", small_data)
        prepare_pools(AlignConfig(pool=PoolConfig(sources=["catqa", "alpaca"], heldout_per_label=5)), tmp_path,
                      spec)
    assert not (tmp_path / "pool" / "validation.jsonl").exists()
    assert [s.name for s, _ in heldout_sets(tmp_path / "pool")] == ["heldout-harmful", "heldout-benign"]


def test_the_report_lists_the_licenses_of_the_sources_used(validated_run):
    r = validated_run
    report = json.loads((r["run"] / "pool" / "report.json").read_text())
    assert report["licenses"] == {"do_not_answer": "Apache-2.0", "coconot_contrast": "MIT", "catqa": "Apache-2.0",
                                  "or_bench_toxic": "CC-BY-4.0", "or_bench_80k": "CC-BY-4.0",
                                  "alpaca": "CC-BY-NC-4.0"}
    assert set(report["counts"]["by_source"]) == set(TRAIN_SOURCES)
    assert all(re.fullmatch(rf"{S.SOURCES[p.source].prefix}-\d{{4}}", p.id) for p in r["train"])


def test_the_default_report_lists_the_five_licenses(small_data, spec, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "FILES_DIR", small_data)
        prepare_pools(AlignConfig(pool=PoolConfig(heldout_per_label=5)), tmp_path, spec)
    report = json.loads((tmp_path / "pool" / "report.json").read_text())
    assert report["licenses"] == {"do_not_answer": "Apache-2.0", "coconot_contrast": "MIT", "coconot_pref": "MIT",
                                  "ifeval": "Apache-2.0", "hh_rlhf": "MIT"}
    assert "validation" not in report and not (tmp_path / "pool" / "validation.jsonl").exists()


def test_validation_beside_the_default_sources(small_data, spec, tmp_path):
    """The validation sources are read for the validation prompts only: none of them trains, their licenses are
    listed, and a default pool prompt that near-duplicates one is dropped."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "FILES_DIR", small_data)
        train, held, report = prepare_pools(AlignConfig(pool=PoolConfig(heldout_per_label=5, validation_per_label=5)),
                                            tmp_path, spec)
    assert report["licenses"] == {"do_not_answer": "Apache-2.0", "coconot_contrast": "MIT", "coconot_pref": "MIT",
                                  "ifeval": "Apache-2.0", "or_bench_toxic": "CC-BY-4.0", "or_bench_80k": "CC-BY-4.0",
                                  "hh_rlhf": "MIT"}
    assert set(report["counts"]["by_source"]) == set(S.DEFAULT_SOURCES)
    assert len(P.read_pool(tmp_path / "pool" / "validation.jsonl")) == 10 == report["validation"]["total"]
    assert {p.source for p in train + held} <= set(S.DEFAULT_SOURCES)


def test_validation_that_takes_a_whole_label_is_an_error(small_data, spec, tmp_path):
    cfg = AlignConfig(pool=PoolConfig(sources=["or_bench_toxic", "alpaca"], validation_per_label=40))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "FILES_DIR", small_data)
        with pytest.raises(CadaError) as e:
            prepare_pools(cfg, tmp_path, spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("pool.validation_per_label 40: ") and "every harmful prompt" in msg
