"""The lm-evaluation-harness passthrough (``cada eval --lm-eval``), offline: lm-eval's own MMLU task template over a
few of cada's shipped MMLU rows (a local dataset instead of the hub's), on the tiny random model. It must score
what cada's own MMLU scorer scores, resume without rerunning a finished task, and refuse bad input in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cada.cli import app
from cada.errors import CadaError
from cada.evaluate.harness import PAPER_TASKS, model_args, parse_tasks, task_metrics

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


def _task_yaml(root: Path, name: str, template: Path) -> str:
    return (f'include: "{template}"\n'
            f"task: {name}\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            "dataset_kwargs:\n"
            f'  cache_dir: "{root / "cache"}"\n'
            "  data_files:\n"
            f'    test: "{root / "test.jsonl"}"\n'
            f'    dev: "{root / "dev.jsonl"}"\n'
            f'description: "The following are multiple choice questions (with answers) about {SUBJECT}.\\n\\n"\n')


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Two tasks that *include lm-eval's own MMLU template* (prompt, choices, few-shot from dev, metric) and only
    swap the hub dataset for four of cada's shipped anatomy test rows and its five dev rows."""
    lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval extra (installed by scripts/install.sh test)")

    root = tmp_path_factory.mktemp("lm_eval_tasks")
    for split, n in (("test", 4), ("dev", 5)):
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in _rows(split, n):
                f.write(json.dumps(row) + "\n")
    template = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "_default_template_yaml"
    assert template.is_file(), template
    for name in ("cada_mmlu_check", "cada_mmlu_zero"):
        (root / f"{name}.yaml").write_text(_task_yaml(root, name, template))
    return root


@pytest.fixture(scope="module")
def scored(task_dir, tmp_path_factory, tiny_model):
    """Both tasks in one run (5-shot and 0-shot), counting how often lm-eval builds a model."""
    import lm_eval.api.registry as registry

    out = tmp_path_factory.mktemp("lm_eval_out") / "run"
    loads = []
    real = registry.get_model
    mp = pytest.MonkeyPatch()
    mp.setattr(registry, "get_model", lambda name: loads.append(name) or real(name))
    try:
        code, text = cada("eval", "--lm-eval", "cada_mmlu_check:5,cada_mmlu_zero:0", "--lm-eval-include", task_dir,
                          "--model", tiny_model, "-o", out)
    finally:
        mp.undo()
    assert code == 0, text
    return out, text, loads


def test_lm_eval_scores_as_cadas_mmlu(scored, tiny_generator):
    """The same four questions, 5-shot: lm-eval's log-likelihoods of the letters are cada's, so its predictions
    and accuracy are too (cada's MMLU scorer claims to be lm-eval's; this holds it to that)."""
    from cada.evaluate.utility import mmlu_letter_logprobs, mmlu_prompt

    out, output, loads = scored
    assert loads == ["hf"]  # one model for both tasks
    both = json.loads((out / "metrics.json").read_text())
    assert set(both) == {"cada_mmlu_check", "cada_mmlu_zero"} and both["cada_mmlu_zero"]["num_fewshot"] == 0
    metrics = both["cada_mmlu_check"]
    assert metrics["n"] == 4 and metrics["num_fewshot"] == 5 and metrics["metric"] == "acc,none"
    assert metrics["harness"] == "lm-eval" and "cada_mmlu_check" in output and "cada_mmlu_zero" in output
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


def test_lm_eval_resumes_without_rerunning(scored, task_dir, tiny_model, monkeypatch):
    import lm_eval
    import lm_eval.api.registry as registry

    out, _, _ = scored
    done = out / "tasks" / "cada_mmlu_check-5shot.json"
    before = (done.stat().st_mtime_ns, (out / "metrics.json").read_text())

    def never(*a, **k):
        raise AssertionError("a finished task was scored again")

    monkeypatch.setattr(lm_eval, "simple_evaluate", never)
    monkeypatch.setattr(registry, "get_model", never)  # nothing left to score: no model is loaded either
    code, text = cada("eval", "--lm-eval", "cada_mmlu_check:5,cada_mmlu_zero:0", "--lm-eval-include", task_dir,
                      "--model", tiny_model, "-o", out)
    assert code == 0, text
    assert (done.stat().st_mtime_ns, (out / "metrics.json").read_text()) == before
    # other settings on the same folder: refused before anything loads, the scores kept
    code, text = cada("eval", "--lm-eval", "cada_mmlu_check:5", "--lm-eval-include", task_dir, "--model", tiny_model,
                      "-o", out, "--limit", "2")
    assert code == 1 and "other settings (limit None, now 2)" in text
    assert done.stat().st_mtime_ns == before[0]


def test_lm_eval_runs_a_lora_adapter_folder(task_dir, tmp_path, tiny_model, scored):
    """An adapter folder (as `cada train --no-merge` leaves it) goes in through lm-eval's peft path: its answers
    are the adapted model's, not the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    adapted.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(adapter)
    code, text = cada("eval", "--lm-eval", "cada_mmlu_zero:0", "--lm-eval-include", task_dir, "--model", adapter,
                      "-o", tmp_path / "out")
    assert code == 0, text

    def logprobs(folder: Path) -> list:
        rows = [json.loads(x) for x in (folder / "samples" / "cada_mmlu_zero-0shot.jsonl").read_text().splitlines()]
        return [r[0][0] for row in sorted(rows, key=lambda r: r["doc_id"]) for r in row["resps"]]

    adapted_lp, base_lp = logprobs(tmp_path / "out"), logprobs(scored[0])
    assert len(adapted_lp) == len(base_lp) == 16  # 4 questions x 4 letters
    assert max(abs(a - b) for a, b in zip(adapted_lp, base_lp)) > 1e-3


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


def test_adapter_folder_goes_in_as_peft(tmp_path, tiny_model):
    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"base_model_name_or_path": tiny_model}))
    assert model_args(str(tmp_path), backend="hf") == ("hf", {"trust_remote_code": False, "pretrained": tiny_model,
                                                              "peft": str(tmp_path)})
    (tmp_path / "tokenizer.json").write_text("{}")  # the adapter's own tokenizer, where cada saved one
    assert model_args(str(tmp_path), backend="hf")[1]["tokenizer"] == str(tmp_path)
    with pytest.raises(CadaError, match="merged model"):
        model_args(str(tmp_path), backend="vllm")
    config.write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(CadaError, match=r"adapter_config.json: base_model_name_or_path .*gone"):
        model_args(str(tmp_path), backend="hf")
    assert model_args("org/name", backend="vllm", tensor_parallel_size=2)[1]["tensor_parallel_size"] == 2


def test_task_metrics_read_lm_evals_own_shapes():
    """Result shapes as lm-eval 0.4 writes them: gsm8k (a leaf task with two filters: flexible-extract is the
    0-shot headline), bbh_zeroshot (a group aggregating flexible-extract only), mmlu (a nested group with no n-shot
    entry of its own), and a standard error lm-eval could not compute ("N/A")."""
    gsm8k = {"results": {"gsm8k": {"exact_match,strict-match": 0.02, "exact_match_stderr,strict-match": 0.004,
                                   "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": 0.1}},
             "n-samples": {"gsm8k": {"original": 1319, "effective": 1319}}, "n-shot": {"gsm8k": 0}}
    m = task_metrics("gsm8k", gsm8k)
    assert (m["metric"], m["n"], m["num_fewshot"]) == ("exact_match,flexible-extract", 1319, 0)
    assert m["accuracy"] == {"value": 0.5, "ci95": [pytest.approx(0.304), pytest.approx(0.696)]}
    assert m["all"]["exact_match,strict-match"] == 0.02

    bbh = {"results": {"bbh_zeroshot": {"exact_match,flexible-extract": 0.25,
                                        "exact_match_stderr,flexible-extract": 0.05},
                       "bbh_zeroshot_navigate": {}, "bbh_zeroshot_snarks": {}},
           "n-samples": {"bbh_zeroshot_navigate": {"effective": 6}, "bbh_zeroshot_snarks": {"effective": 4}},
           "n-shot": {"bbh_zeroshot": 0, "bbh_zeroshot_navigate": 0, "bbh_zeroshot_snarks": 0}}
    m = task_metrics("bbh_zeroshot", bbh)
    assert (m["metric"], m["n"], m["accuracy"]["value"]) == ("exact_match,flexible-extract", 10, 0.25)

    mmlu = {"results": {"mmlu": {"acc,none": 0.3, "acc_stderr,none": "N/A"}},
            "n-samples": {"mmlu_anatomy": {"effective": 1}, "mmlu_virology": {"effective": 1}},
            "n-shot": {"mmlu_anatomy": 5, "mmlu_virology": 5}}
    m = task_metrics("mmlu", mmlu)
    assert (m["num_fewshot"], m["n"]) == (5, 2)
    assert m["accuracy"] == {"value": 0.3, "ci95": None}  # no made-up interval

    ppl = task_metrics("wikitext", {"results": {"wikitext": {"word_perplexity,none": 31.2}},
                                    "n-samples": {"wikitext": {"effective": 3}}, "n-shot": {"wikitext": 0}})
    assert ppl["accuracy"] is None and ppl["all"] == {"word_perplexity,none": 31.2}
