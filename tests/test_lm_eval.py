"""The lm-evaluation-harness passthrough (``cada eval --lm-eval``), offline: lm-eval's own MMLU task template over a
few of cada's shipped MMLU rows (a local dataset instead of the hub's), on the tiny random model. It must score
what cada's own MMLU scorer scores, resume without rerunning a finished task, and refuse bad input in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("lm_eval", reason="the lm-eval extra (installed by scripts/install.sh test)")

from cada.cli import app  # noqa: E402
from cada.errors import CadaError  # noqa: E402
from cada.evaluate.harness import PAPER_TASKS, model_args, parse_tasks, task_metrics  # noqa: E402

runner = CliRunner()
MMLU = Path(__file__).resolve().parents[1] / "src" / "cada" / "data" / "files" / "mmlu"
SUBJECT = "anatomy"
LETTERS = "ABCD"


def cada(*args: str) -> tuple[int, str]:
    """Exit status and what the user reads: the output, or the one-line error ``cada`` prints for a CadaError."""
    r = runner.invoke(app, [str(a) for a in args])
    return (1, str(r.exception)) if isinstance(r.exception, CadaError) else (r.exit_code, r.output)


def _rows(split: str, n: int) -> list[dict]:
    with open(MMLU / split / f"{SUBJECT}_{split}.csv", newline="", encoding="utf-8") as fh:
        return [{"question": r[0], "subject": SUBJECT, "choices": r[1:5], "answer": LETTERS.index(r[5])}
                for r, _ in zip(csv.reader(fh), range(n))]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A task that *includes lm-eval's own MMLU template* (prompt, choices, few-shot from dev, metric) and only
    swaps the hub dataset for four of cada's shipped anatomy test rows and its five dev rows."""
    import lm_eval

    root = tmp_path_factory.mktemp("lm_eval_tasks")
    for split, n in (("test", 4), ("dev", 5)):
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in _rows(split, n):
                f.write(json.dumps(row) + "\n")
    template = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "_default_template_yaml"
    assert template.is_file(), template
    (root / "cada_mmlu_check.yaml").write_text(
        f'include: "{template}"\n'
        "task: cada_mmlu_check\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        f'  cache_dir: "{root / "cache"}"\n'
        "  data_files:\n"
        f'    test: "{root / "test.jsonl"}"\n'
        f'    dev: "{root / "dev.jsonl"}"\n'
        f'description: "The following are multiple choice questions (with answers) about {SUBJECT}.\\n\\n"\n')
    return root


@pytest.fixture(scope="module")
def scored(task_dir, tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("lm_eval_out") / "run"
    code, text = cada("eval", "--lm-eval", "cada_mmlu_check:5", "--lm-eval-include", task_dir, "--model", tiny_model,
                      "-o", out)
    assert code == 0, text
    return out, text


def test_lm_eval_scores_as_cadas_mmlu(scored, tiny_generator):
    """The same four questions, 5-shot: lm-eval's log-likelihoods of the letters are cada's, so its predictions
    and accuracy are too (cada's MMLU scorer claims to be lm-eval's; this holds it to that)."""
    from cada.evaluate.utility import mmlu_letter_logprobs, mmlu_prompt

    out, output = scored
    metrics = json.loads((out / "metrics.json").read_text())["cada_mmlu_check"]
    assert metrics["n"] == 4 and metrics["num_fewshot"] == 5 and metrics["metric"] == "acc,none"
    assert metrics["harness"] == "lm-eval" and "cada_mmlu_check" in output
    samples = [json.loads(x) for x in (out / "samples" / "cada_mmlu_check-5shot.jsonl").read_text().splitlines()]
    assert sorted(s["doc_id"] for s in samples) == [0, 1, 2, 3]

    dev = [{**r, "choices": r["choices"], "answer": LETTERS[r["answer"]]} for r in _rows("dev", 5)]
    test = [{**r, "answer": LETTERS[r["answer"]]} for r in _rows("test", 4)]
    ours = mmlu_letter_logprobs(tiny_generator.model, tiny_generator.tokenizer, [mmlu_prompt(r, dev) for r in test],
                                batch_size=4)
    right = 0
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        theirs = [resp[0][0] for resp in s["resps"]]
        mine = ours[s["doc_id"]]
        assert theirs == pytest.approx(mine, abs=1e-3), (s["doc_id"], theirs, mine)
        right += max(range(4), key=mine.__getitem__) == s["target"]
    assert metrics["accuracy"]["value"] == pytest.approx(right / 4, abs=1e-4)
    lo, hi = metrics["accuracy"]["ci95"]
    assert 0.0 <= lo <= metrics["accuracy"]["value"] <= hi <= 1.0


def test_lm_eval_resumes_without_rerunning(scored, task_dir, tiny_model):
    out, _ = scored
    done = out / "tasks" / "cada_mmlu_check-5shot.json"
    before = done.stat().st_mtime_ns
    code, text = cada("eval", "--lm-eval", "cada_mmlu_check:5", "--lm-eval-include", task_dir, "--model", tiny_model,
                      "-o", out)
    assert code == 0, text
    assert done.stat().st_mtime_ns == before  # read back, not scored again
    # other settings on the same folder: refused before anything loads, the scores kept
    code, text = cada("eval", "--lm-eval", "cada_mmlu_check:5", "--lm-eval-include", task_dir, "--model", tiny_model,
                      "-o", out, "--limit", "2")
    assert code == 1 and "other settings (limit None, now 2)" in text
    assert done.stat().st_mtime_ns == before


def test_lm_eval_bad_input_is_one_line(task_dir, tmp_path, tiny_model):
    code, text = cada("eval", "--lm-eval", "cada_mmlu_chek", "--lm-eval-include", task_dir, "--model", tiny_model,
                      "-o", tmp_path / "a")
    assert code == 1 and "'cada_mmlu_chek': not an lm-eval task (did you mean cada_mmlu_check" in text
    assert not (tmp_path / "a").exists()
    for extra, word in ((["--benchmark", "mmlu"], "--benchmark"), (["--mode", "cases"], "--mode"),
                        (["--attack", "prefix_injection"], "--attack"), (["--backend", "http"], "--backend")):
        code, text = cada("eval", "--lm-eval", "mmlu", *extra, "-o", tmp_path / "b")
        assert code == 1 and word in text and "\n" not in text, (extra, text)
    code, text = cada("eval", "--benchmark", "mmlu", "--chat-template", "-o", tmp_path / "c")
    assert code == 1 and "go with --lm-eval" in text
    code, text = cada("eval", "--lm-eval", "mmlu", "--lm-eval-include", tmp_path / "nowhere", "-o", tmp_path / "d")
    assert code == 1 and "not a folder of lm-eval task YAML files" in text


def test_parse_tasks_and_paper_preset():
    assert parse_tasks(["paper"]) == PAPER_TASKS == {"gsm8k": 0, "bbh_zeroshot": 0, "mmlu": 5}
    assert parse_tasks(["mmlu:5,gsm8k", "arc_easy:0"]) == {"mmlu": 5, "gsm8k": None, "arc_easy": 0}
    with pytest.raises(CadaError, match="SHOTS a whole number"):
        parse_tasks(["mmlu:five"])
    with pytest.raises(CadaError, match="at least one"):
        parse_tasks([" , "])


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # as if the extra were not installed
    code, text = cada("eval", "--lm-eval", "mmlu", "-o", tmp_path / "x")
    assert code == 1 and "pip install 'cada[lm-eval]'" in text


def test_adapter_folder_goes_in_as_peft(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    assert model_args(str(tmp_path), backend="hf") == ("hf", {"trust_remote_code": False, "pretrained": "/models/base",
                                                              "peft": str(tmp_path)})
    with pytest.raises(CadaError, match="merged model"):
        model_args(str(tmp_path), backend="vllm")
    assert model_args("org/name", backend="vllm", tensor_parallel_size=2)[1]["tensor_parallel_size"] == 2


def test_group_task_metrics_sum_their_subtasks():
    """A group (mmlu, bbh_zeroshot) reports its aggregate; n is the documents of its subtasks."""
    result = {"results": {"grp": {"exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": 0.1,
                                  "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.05},
                          "a": {}, "b": {}},
              "n-samples": {"a": {"original": 10, "effective": 6}, "b": {"original": 10, "effective": 4}},
              "n-shot": {"grp": 0}, "lm_eval_version": "x"}
    m = task_metrics("grp", result)
    assert m["n"] == 10 and m["metric"] == "exact_match,strict-match"
    assert m["accuracy"] == {"value": 0.25, "ci95": [pytest.approx(0.152), pytest.approx(0.348)]}
