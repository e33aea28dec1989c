"""The BBH and MMLU utility sets (issue 27): the shipped subsets, BBH's exact match, MMLU's 5-shot prompt and
log-likelihood scoring, the full sets by folder, and `cada eval --benchmark bbh|mmlu` on the tiny random model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cada.config import EvalSet
from cada.data import benchmarks as B
from cada.data.sources import FILES_DIR
from cada.errors import CadaError
from cada.evaluate.metrics import metrics
from cada.evaluate.utility import (MMLU_LETTERS, bbh_answer, bbh_correct, bbh_prompt, mmlu_5shot_accuracy,
                                   mmlu_letter_logprobs, mmlu_predict, mmlu_prompt, utility_correct)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"  # the full public copies the subsets are cut from, where present
BBH_TASKS = 27
MMLU_SUBJECTS = 57


# --- the shipped subsets ---------------------------------------------------------------------------------

def test_bbh_subset_covers_every_task_with_its_first_ten_examples():
    items = B.load_benchmark("bbh")
    tasks = sorted({it.category for it in items})
    assert len(items) == 270 and len(tasks) == BBH_TASKS
    assert all(sum(it.category == t for it in items) == 10 for t in tasks)
    assert tasks == sorted(p.stem for p in (FILES_DIR / "bbh" / "tasks").glob("*.json"))
    assert {it.kind for it in items} == {"utility"} and all(it.meta == {"scorer": "bbh"} for it in items)
    first = json.loads((FILES_DIR / "bbh" / "tasks" / "boolean_expressions.json").read_text())["examples"][0]
    assert items[0].id == "bbh-boolean_expressions-0" and items[0].reference == first["target"]
    assert items[0].prompt == bbh_prompt(first["input"])
    assert B.load_benchmark("bbh") == items  # deterministic
    assert (FILES_DIR / "bbh" / "LICENSE").read_text().startswith("MIT License")


def test_mmlu_subset_covers_every_subject_and_ships_the_whole_dev_split():
    items = B.load_benchmark("mmlu")
    subjects = sorted({it.category for it in items})
    assert len(items) == 285 and len(subjects) == MMLU_SUBJECTS
    assert all(sum(it.category == s for it in items) == 5 for s in subjects)
    dev = B.mmlu_rows(FILES_DIR / "mmlu", "dev")
    assert len(dev) == 285 and all(sum(r["subject"] == s for r in dev) == 5 for s in subjects)
    assert {it.reference for it in items} <= set(MMLU_LETTERS) and all(it.meta == {"scorer": "mmlu"} for it in items)
    assert all(it.prompt.endswith("\nAnswer:") for it in items)
    assert B.load_benchmark("mmlu") == items
    assert (FILES_DIR / "mmlu" / "LICENSE").read_text().startswith("MIT License")


def test_a_limit_spreads_over_tasks_and_subjects():
    bbh = B.eval_items(EvalSet(name="bbh", limit=BBH_TASKS))
    mmlu = B.eval_items(EvalSet(name="mmlu", limit=MMLU_SUBJECTS))
    assert len({it.category for it in bbh}) == BBH_TASKS and all(it.id.endswith("-0") for it in bbh)
    assert len({it.category for it in mmlu}) == MMLU_SUBJECTS
    assert [it.id for it in B.eval_items(EvalSet(name="mmlu", limit=4))] == [
        "mmlu-abstract_algebra-0", "mmlu-anatomy-0", "mmlu-astronomy-0", "mmlu-business_ethics-0"]


@pytest.mark.skipif(not (SHARED / "bbh" / "tasks").is_dir() or not (SHARED / "mmlu" / "test").is_dir(),
                    reason="needs the full BBH and MMLU copies in ../shared/data")
def test_the_script_rebuilds_the_shipped_subsets_byte_for_byte(tmp_path):
    spec = importlib.util.spec_from_file_location("make_utility_subsets", ROOT / "scripts" / "make_utility_subsets.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    bbh = script.make_bbh(SHARED / "bbh", tmp_path / "bbh", 10)
    test, dev = script.make_mmlu(SHARED / "mmlu", tmp_path / "mmlu", 5)
    assert (len(bbh), sum(bbh.values()), len(test), sum(test.values()), sum(dev.values())) == (27, 270, 57, 285, 285)
    for name in ("bbh", "mmlu"):
        built = sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*") if p.is_file())
        shipped = sorted(p.relative_to(FILES_DIR / name) for p in (FILES_DIR / name).rglob("*")
                         if p.is_file() and p.name != "SOURCE.md")
        assert built == shipped
        assert all((tmp_path / name / p).read_bytes() == (FILES_DIR / name / p).read_bytes() for p in built)


def test_full_sets_come_from_the_folder_an_environment_variable_names(tmp_path, monkeypatch):
    for name, env in (("bbh-full", "CADA_BBH_DIR"), ("mmlu-full", "CADA_MMLU_DIR")):
        monkeypatch.delenv(env, raising=False)
        with pytest.raises(CadaError) as e:
            B.load_benchmark(name)
        assert "\n" not in str(e.value) and f"${env}" in str(e.value) and name in str(e.value)
        monkeypatch.setenv(env, str(tmp_path / "gone"))
        with pytest.raises(CadaError, match="no such folder") as e:
            B.load_benchmark(name)
        assert "\n" not in str(e.value)
        monkeypatch.setenv(env, str(tmp_path))  # a folder, but not a set's
        with pytest.raises(CadaError, match="no (BBH task|MMLU dev) files"):
            B.load_benchmark(name)
    # a copy laid out as upstream reads as the shipped set does (the shipped folders are such copies)
    monkeypatch.setenv("CADA_BBH_DIR", str(FILES_DIR / "bbh"))
    monkeypatch.setenv("CADA_MMLU_DIR", str(FILES_DIR / "mmlu"))
    assert B.load_benchmark("bbh-full") == B.load_benchmark("bbh")
    assert B.load_benchmark("mmlu-full") == B.load_benchmark("mmlu")
    (tmp_path / "test").mkdir()
    (tmp_path / "dev").mkdir()
    (tmp_path / "test" / "x_test.csv").write_text("q,a,b,c,d,E\n")
    (tmp_path / "dev" / "x_dev.csv").write_text("q,a,b,c,d,A\n")
    monkeypatch.setenv("CADA_MMLU_DIR", str(tmp_path))
    with pytest.raises(CadaError, match="x_dev.csv|x_test.csv"):
        B.load_benchmark("mmlu-full")


# --- BBH: exact match on the final answer ----------------------------------------------------------------

@pytest.mark.parametrize("response, target, right", [
    ("(A) is wrong, (B) too... Answer: (C)", "(C)", True),
    ("Answer: (C)", "(B)", False),
    ("Answer: C.", "(C)", True),
    ("**Answer:** (d) the red one", "(D)", True),
    ("Answer: A blue ball", "(A)", False),  # a word, not an option letter
    ("the answer is True.", "True", True),
    ("Answer: false", "True", False),
    ("Answer: Yes, the ball was moved.", "Yes", True),
    ("Answer: No", "Yes", False),
    ("Answer: invalid", "valid", False),
    ("Answer: ] ] >", "] ] >", True),
    ("Answer: ]]>", "] ] >", True),
    ("Answer: ] >", "] ] >", False),
    ("Answer: -38.", "-38", True),
    ("Answer: 38", "-38", False),
    ("Answer: apple banana cherry", "apple banana cherry", True),
    ("Answer: banana apple cherry", "apple banana cherry", False),
    ("Answer: (Monsters, Inc)", "Monsters, Inc", True),
    ("I cannot help with that.", "True", False),
    ("", "(A)", False),
])
def test_bbh_exact_match(response, target, right):
    assert bbh_correct(response, target) is right
    assert utility_correct(response, target, "bbh") is right


def test_bbh_prompt_and_answer():
    mc = "Which is red?\nOptions:\n(A) sky\n(B) blood"
    assert bbh_prompt(mc).startswith(mc + "\n\n") and "(A)" in bbh_prompt(mc).split("\n\n")[-1]
    assert bbh_prompt("True and False is").endswith("Give the final answer after 'Answer:'.")
    assert bbh_answer("Answer: (A)\nAnswer: (B)\nThat is all.") == "(B)"  # the last answer given
    assert utility_correct("#### 18", "#### 18") and not utility_correct("18", "(A)", "bbh")
    with pytest.raises(CadaError, match="unknown utility scorer"):
        utility_correct("x", "y", "nope")


# --- MMLU: the 5-shot prompt, from the dev split of the same subject ------------------------------------------

def _row(subject, i, answer="A", question=None):
    return {"subject": subject, "question": question or f"{subject} q{i}?",
            "choices": [f"{subject} c{i}{x}" for x in "abcd"], "answer": answer}


def test_the_five_shots_are_the_first_dev_rows_of_the_same_subject():
    dev = [_row("other", i, "D") for i in range(5)] + [_row("hs_physics", i, "B") for i in range(7)]
    prompt = mmlu_prompt(_row("hs_physics", 99, question="  What is g? "), dev)
    head = "The following are multiple choice questions (with answers) about hs physics.\n\n"

    def question(i: int, text: str) -> str:
        return text + "".join(f"\n{x}. hs_physics c{i}{y}" for x, y in zip("ABCD", "abcd")) + "\nAnswer:"

    shots = "".join(question(i, f"hs_physics q{i}?") + " B\n\n" for i in range(5))
    assert prompt == head + shots + question(99, "What is g?")
    assert "other" not in prompt and "q5" not in prompt
    with pytest.raises(CadaError, match="'chemistry' has 0 dev rows"):
        mmlu_prompt(_row("chemistry", 0), dev)


def test_shipped_mmlu_prompts_take_their_shots_from_dev_only():
    dev = B.mmlu_rows(FILES_DIR / "mmlu", "dev")
    tests = B.mmlu_rows(FILES_DIR / "mmlu", "test")
    for it, row in zip(B.load_benchmark("mmlu"), tests):
        assert it.category == row["subject"] and it.reference == row["answer"]
        shots, question = it.prompt.rsplit("\n\n", 1)
        own = [d for d in dev if d["subject"] == row["subject"]]
        assert all(f"{d['question'].strip()}\nA. {d['choices'][0]}" in shots for d in own)
        assert shots.count("\nAnswer: ") == 5 and question.startswith(row["question"].strip())
        assert it.prompt.count(row["question"].strip()) == 1  # never its own shot
    assert not {r["question"] for r in tests} & {r["question"] for r in dev}


# --- MMLU: the log-likelihood of the answer letters ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model):
    from cada.models.load import load_model

    return load_model(tiny_model)


def _plain_logprob(model, tokenizer, prompt: str, continuation: str) -> float:
    """log p(continuation | prompt) from one unbatched forward pass over the whole text."""
    import torch

    ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([whole])).logits[0, len(ctx) - 1:len(whole) - 1]
    logp = torch.log_softmax(logits.float(), -1)
    return float(sum(logp[k, t] for k, t in enumerate(whole[len(ctx):])))


def test_letter_logprobs_are_the_next_token_logprobs(tiny):
    import torch

    model, tok = tiny
    prompts = [it.prompt for it in B.eval_items(EvalSet(name="mmlu", limit=2))] + ["Q\nA. x\nB. y\nC. z\nD. w\nAnswer:"]
    got = mmlu_letter_logprobs(model, tok, prompts, batch_size=2)  # padded batches of unequal lengths
    want = []
    for p in prompts:  # one plain pass per prompt: each letter is one token after it
        ctx = tok(p, add_special_tokens=False)["input_ids"]
        letters = [tok(f"{p} {x}", add_special_tokens=False)["input_ids"][len(ctx):] for x in MMLU_LETTERS]
        assert all(len(t) == 1 for t in letters)
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ctx])).logits[0, -1].float(), -1)
        want.append([float(logp[t[0]]) for t in letters])
    assert all(abs(g - w) < 1e-4 for gs, ws in zip(got, want) for g, w in zip(gs, ws)), (got, want)
    unbatched = mmlu_letter_logprobs(model, tok, prompts, batch_size=1)
    assert [x for row in unbatched for x in row] == pytest.approx([x for row in got for x in row], abs=1e-4)
    # a continuation of several tokens is summed over its tokens
    words = ("zebrafish", "A", "photosynthesis", "B")
    multi = mmlu_letter_logprobs(model, tok, prompts[-1:], choices=words)[0]
    assert multi == pytest.approx([_plain_logprob(model, tok, prompts[-1], f" {w}") for w in words], abs=1e-4)
    # a prompt longer than the context keeps its last tokens
    last = tok(prompts[0], add_special_tokens=False)["input_ids"][-20:]
    letters = [tok(f"{prompts[0]} {x}", add_special_tokens=False)["input_ids"][-1] for x in MMLU_LETTERS]
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([last])).logits.float()[0, -1], -1)
    assert mmlu_letter_logprobs(model, tok, prompts[:1], max_length=20)[0] == pytest.approx(
        [float(logp[t]) for t in letters], abs=1e-4)


def test_mmlu_accuracy_is_the_argmax_letter_against_the_answer(tiny):
    model, tok = tiny
    dev = B.mmlu_rows(FILES_DIR / "mmlu", "dev")
    rows = B.mmlu_rows(FILES_DIR / "mmlu", "test")[::100]
    prompts = [mmlu_prompt(r, dev) for r in rows]
    scores = mmlu_letter_logprobs(model, tok, prompts)
    picked = [MMLU_LETTERS[s.index(max(s))] for s in scores]
    assert mmlu_predict(model, tok, prompts) == picked
    right = [{**r, "answer": p} for r, p in zip(rows, picked)]
    wrong = [{**r, "answer": next(x for x in MMLU_LETTERS if x != p)} for r, p in zip(rows, picked)]
    assert mmlu_5shot_accuracy(model, tok, right, dev) == [True] * len(rows)
    assert mmlu_5shot_accuracy(model, tok, wrong, dev) == [False] * len(rows)


def test_loglik_records_have_accuracy_and_no_refusal_rates():
    recs = [{"scoring": "loglik", "judge": None, "format_ok": None, "correct": c} for c in (True, True, False, True)]
    m = metrics(recs)
    assert m["n"] == 4 and m["accuracy"]["value"] == 0.75 and len(m["accuracy"]["ci95"]) == 2
    assert not {"refusal_rate", "compliance_rate", "refused_or_partial_rate", "format_ok_rate"} & set(m)


# --- cada eval end to end ---------------------------------------------------------------------------------

def _eval(*args: str):
    from cada.cli import app

    return CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("benchmark", ["mmlu", "bbh"])
def test_cada_eval_reports_accuracy(benchmark, tmp_path, tiny_model):
    out = tmp_path / benchmark
    res = _eval("--benchmark", benchmark, "--limit", "4", "--model", tiny_model, "--max-new-tokens", "4",
                "--output", str(out))
    assert res.exit_code == 0, (res.output, res.exception)
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4 and 0.0 <= m["accuracy"]["value"] <= 1.0 and len(m["accuracy"]["ci95"]) == 2
    assert len(m["by_category"]) == 4
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(isinstance(r["correct"], bool) for r in recs)
    assert m["accuracy"]["value"] == sum(r["correct"] for r in recs) / 4
    if benchmark == "mmlu":  # scored, not generated: a letter, its log-probabilities, no refusal label
        assert all(r["scoring"] == "loglik" and r["response"] in MMLU_LETTERS and r["judge"] is None
                   and set(r["logprobs"]) == set(MMLU_LETTERS) for r in recs)
        assert "refusal_rate" not in m and m["scoring"] == "loglik"
    else:
        assert all(r["judge"] in ("refuse", "comply", "partial") for r in recs) and "refusal_rate" in m
        assert all(r["correct"] == bbh_correct(r["response"], r["reference"]) for r in recs)
    # a rerun resumes: nothing new to score, the same numbers
    assert _eval("--benchmark", benchmark, "--limit", "4", "--model", tiny_model, "--max-new-tokens", "4",
                 "--output", str(out)).exit_code == 0
    assert json.loads((out / "metrics.json").read_text()) == m


def test_mmlu_over_http_is_a_one_line_error(tmp_path):
    res = _eval("--benchmark", "mmlu", "--limit", "1", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                "--output", str(tmp_path / "ev"))
    assert isinstance(res.exception, CadaError), (res.output, res.exception)
    msg = str(res.exception)
    assert "\n" not in msg and "log-likelihood" in msg and "--backend local" in msg, msg
    assert not (tmp_path / "ev" / "records.jsonl").exists()
