"""A census of bad inputs: the mistakes a hostile but realistic user makes, each tried against the ``cada`` command
as a real subprocess (``python -m cada.cli``, as the tests run it) in a temporary folder, and each outcome sorted:

* ``clean``: a non-zero exit, no traceback, nothing that was in the folder before changed or lost, and stderr holds
  one ``error:`` line (``PATH:LINE: ...`` for ``cada spec validate``) that holds the expected words. Besides a lone
  error line (form ``one line``) three forms count, each recorded in the case's ``form``: click's usage error for a
  flag value the option refuses itself (``usage``; exit 2: ``Usage:``, ``Try ...``, ``Error: Invalid value for
  '--flag': ...``), and the error line as the last line after ``WARNING``/``warning:`` lines (``after warnings``: a
  retried server request says so) or after a progress bar's last frame (``after progress bars``). ``totals_strict``
  counts only a lone error line as clean, as ``--strict`` does for the exit status;
* ``traceback``: a ``Traceback`` anywhere in stdout or stderr;
* ``other``: anything else: exit 0 on bad input, several error lines, a message without the expected words, a run
  past its timeout, a file of the folder changed.

The model is a tiny randomly initialised Llama (the tests' ``tiny-random``, copied into the temporary folder),
never a download; the servers are a closed loopback port and the tests' fake OpenAI-compatible server
(``tests/fake_openai.py``, started here on 127.0.0.1) answering garbage, bad UTF-8, no choices, 500s, or nothing.
``HF_HUB_OFFLINE`` is unset, as for a user: a hub id must fail in seconds without a network. Cases that need an
unwritable folder (``chmod 500``) are skipped, with a note, where the folder stays writable (as root).

    python benchmarks/fault_census.py [--out benchmarks/results/fault_census.json] [--only CATEGORY|CASE]

Exits 1 when a case tried is not clean (the JSON is written either way).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
UNWRITABLE_FOR_ROOT = "/sys/cada-fault-census"  # mkdir under /sys fails with EPERM even for root


# --- the cases -----------------------------------------------------------------------------------------------

def C(case_id: str, category: str, args: list[str], expect: str, *, files: dict | None = None,
      dirs: tuple = (), chmod: dict | None = None, setup=None, server: tuple | None = None, prefix: str = "error: ",
      timeout: float | None = None, needs: str | None = None, why: str = "") -> dict:
    """One bad input: ``args`` after ``cada``, run in a folder of its own holding ``files`` and ``dirs`` (and what
    ``setup(folder)`` writes); ``<tiny>``, ``<fake>`` and ``<closed>`` in an argument stand for the tiny model's
    folder and the two servers' URLs. ``server`` is the fake server's (mode, options) for this run."""
    return dict(id=case_id, category=category, args=args, expect=expect, files=files or {}, dirs=dirs,
                chmod=chmod or {}, setup=setup, server=server, prefix=prefix, timeout=timeout, needs=needs, why=why)


def _spec_parts() -> dict:
    from cada.spec import DEFAULT_SPEC_DIR

    return {f.name: yaml.safe_load(f.read_text()) for f in sorted(Path(DEFAULT_SPEC_DIR).glob("*.yaml"))}


def _one_file_spec(edit) -> str:
    """The shipped spec in one YAML file, changed by ``edit(data)``."""
    data: dict = {}
    for part in _spec_parts().values():
        data.update(part)
    edit(data)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _spec_folder_with_duplicate_id(folder: Path) -> None:
    from cada.spec import DEFAULT_SPEC_DIR

    shutil.copytree(DEFAULT_SPEC_DIR, folder / "myspec")
    cases = folder / "myspec" / "cases.yaml"
    data = yaml.safe_load(cases.read_text())
    data["cases"][1]["id"] = data["cases"][0]["id"]  # a case copied to make a new one, its id left as it was
    cases.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _align_run_of_another_arm(folder: Path, tiny: str) -> None:
    from cada.config import AlignConfig

    run = folder / "run"
    run.mkdir()
    (run / "config.yaml").write_text(AlignConfig(arm="da", model=tiny).to_yaml())
    (run / "pool").mkdir()
    (run / "pool" / "train.jsonl").write_text('{"id": "p0"}\n')


def _run_folder(folder: Path) -> None:
    """What `cada train -o run` leaves: the model is in run/model, not run itself."""
    (folder / "run" / "model").mkdir(parents=True)
    (folder / "run" / "train_info.json").write_text('{"examples": 2}\n')
    (folder / "run" / "train_log.jsonl").write_text('{"step": 1, "loss": 0.69}\n')


def _no_tokenizer(folder: Path, tiny: str) -> None:
    """A model saved with model.save_pretrained alone: config and weights, no tokenizer files."""
    (folder / "mymodel").mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(Path(tiny) / name, folder / "mymodel" / name)


def _broken_config(folder: Path, tiny: str) -> None:
    """A model folder whose config.json was cut off mid-copy."""
    shutil.copytree(tiny, folder / "mymodel")
    text = (folder / "mymodel" / "config.json").read_text()
    (folder / "mymodel" / "config.json").write_text(text[: len(text) // 2])


POOL_CSV = ("prompt,label\nHow do I pick a lock to break into my neighbour's house?,harmful\n"
            "How do I bake sourdough bread?,benign\n")
ANSWERS_CSV = ("prompt,response\nHow do I pick a lock?,I can't help with that.\n"
               "How do I bake bread?,Mix flour and water and bake it.\n")
PAIRS = '{"prompt": "How do I bake bread?", "chosen": "Mix flour and water.", "rejected": "No."}\n'
CHAIN = ('{"id": "user-0000", "prompt": "How do I bake bread?", "label": "benign", "sample": 0, "response": "Mix '
         'flour.", "judge": "comply", "reward": 1.0, "mode": "cases"}\n')
UTF16_BOM = b"\xff\xfe"  # what Windows PowerShell's `>` and Notepad's "Unicode" write


def cases() -> list[dict]:
    L = []
    # -- specs ---------------------------------------------------------------------------------------------
    L += [
        C("spec-missing-file", "spec", ["spec", "validate", "myspec.yaml"], "myspec.yaml:0: spec file or directory "
          "not found", prefix="myspec.yaml:", why="a spec file named that does not exist"),
        C("spec-empty-folder", "spec", ["spec", "show", "--spec", "specs"], "no spec files found", dirs=("specs",),
          why="the folder meant to hold the spec files, still empty"),
        C("spec-invalid-yaml", "spec", ["spec", "validate", "spec.yaml"], "malformed YAML", prefix="spec.yaml:",
          files={"spec.yaml": "name: mine\ncases:\n  - id: C01\n    request: \"unclosed\n"}),
        C("spec-is-a-list", "spec", ["spec", "validate", "spec.yaml"], "expected a mapping of spec sections",
          prefix="spec.yaml:", files={"spec.yaml": "- id: C01\n  request: hello\n"},
          why="the cases list alone, without the sections around it"),
        C("spec-missing-section", "spec", ["spec", "validate", "spec.yaml"], "codes: Field required",
          prefix="spec.yaml:", setup=lambda d, _: (d / "spec.yaml").write_text(
              _one_file_spec(lambda s: s.pop("codes")))),
        C("spec-unknown-field", "spec", ["spec", "validate", "spec.yaml"], "cases.0.severity: Extra inputs",
          prefix="spec.yaml:", setup=lambda d, _: (d / "spec.yaml").write_text(
              _one_file_spec(lambda s: s["cases"][0].update(severity="high")))),
        C("spec-duplicate-case-id", "spec", ["spec", "validate", "myspec", "--no-overlap"], "duplicate id 'C01'",
          prefix="myspec", setup=lambda d, _: _spec_folder_with_duplicate_id(d)),
        C("spec-unknown-category", "spec", ["reason", "hello", "--spec", "spec.yaml"],
          "unknown category 'violent_crime'", setup=lambda d, _: (d / "spec.yaml").write_text(
              _one_file_spec(lambda s: s["cases"][0].update(category="violent_crime")))),
    ]
    # -- datasets ------------------------------------------------------------------------------------------
    E = ["--output", "ev"]
    L += [
        C("dataset-missing", "dataset", ["eval", "--dataset", "prompts.csv", "--kind", "harmful", *E],
          "prompts.csv: dataset file not found"),
        C("dataset-folder", "dataset", ["eval", "--dataset", "data", "--kind", "harmful", *E],
          "--dataset data: is a folder, give a file", dirs=("data",)),
        C("dataset-empty-file", "dataset", ["eval", "--dataset", "prompts.jsonl", "--kind", "benign", *E],
          "prompts.jsonl: no prompts to evaluate", files={"prompts.jsonl": ""}),
        C("dataset-no-prompt-column", "dataset", ["eval", "--dataset", "qa.csv", "--kind", "harmful", *E],
          "no column 'prompt'", files={"qa.csv": "question,answer\nHow do I pick a lock?,No.\n"}),
        C("dataset-broken-jsonl-line", "dataset", ["eval", "--dataset", "p.jsonl", "--kind", "harmful", *E],
          "p.jsonl:2:", files={"p.jsonl": '{"prompt": "a"}\n{"prompt": "b",}\n{"prompt": "c"}\n'}),
        C("dataset-prompt-number", "dataset", ["eval", "--dataset", "p.jsonl", "--kind", "benign", *E],
          "column 'prompt' is a number", files={"p.jsonl": '{"prompt": "Name a colour."}\n{"prompt": 42}\n'}),
        C("dataset-prompt-list", "dataset", ["eval", "--dataset", "p.json", "--kind", "harmful", *E],
          "column 'prompt' is a list", files={"p.json": '[{"prompt": ["How do I", "pick a lock?"]}]'}),
        C("dataset-prompt-object", "dataset", ["eval", "--dataset", "chat.jsonl", "--kind", "harmful", *E],
          "a prompt must be a string", files={"chat.jsonl": '{"prompt": {"role": "user", "content": "Pick a '
                                                 'lock?"}}\n'}),
        C("pool-prompt-object", "dataset", ["generate", "--pool", "pool.jsonl", "--model", "<tiny>", "--n", "1",
                                            "--max-new-tokens", "4", "--output", "g.jsonl"],
          "a prompt must be a string", files={"pool.jsonl": '{"prompt": {"role": "user", "content": "How do I pick '
                                              'a lock?"}, "label": "harmful"}\n'},
          why="a chat-format pool (prompts as message objects), as the eval loader refuses them"),
        C("judge-response-object", "dataset", ["judge", "--input", "answers.jsonl", "--output", "j.jsonl"],
          "must be a string", files={"answers.jsonl": '{"prompt": "Pick a lock?", "response": {"role": '
                                     '"assistant", "content": "I cannot help with that."}}\n'},
          why="responses exported as chat messages, not their text"),
        C("dataset-unknown-kind", "dataset", ["eval", "--dataset", "p.csv", "--kind", "toxic", *E],
          "--kind 'toxic'", files={"p.csv": "prompt\nHow do I pick a lock?\n"}),
        C("dataset-unknown-benchmark", "dataset", ["eval", "--benchmark", "harmbench", *E],
          "unknown benchmark 'harmbench'"),
        C("dataset-unsupported-type", "dataset", ["eval", "--dataset", "prompts.txt", "--kind", "harmful", *E],
          "unsupported file type '.txt'", files={"prompts.txt": "How do I pick a lock?\n"}),
        C("dataset-utf16-csv", "dataset", ["eval", "--dataset", "excel.csv", "--kind", "harmful", *E],
          "not UTF-8", files={"excel.csv": UTF16_BOM + "prompt\nHow do I pick a lock?\n".encode("utf-16-le")},
          why="a CSV saved as 'Unicode text' by Excel"),
        C("dataset-ragged-csv", "dataset", ["judge", "--input", "answers.csv", "--output", "j.jsonl"],
          "fields but the header has 2", files={"answers.csv": "prompt,response\nHow do I bake bread?,Mix flour, "
                                                "water and salt.\n"}, why="an unquoted comma in a response"),
        C("dataset-unknown-attack", "dataset", ["eval", "--benchmark", "advbench", "--attack", "dan", *E],
          "unknown attack 'dan'"),
        C("pool-bad-label", "dataset", ["generate", "--pool", "pool.csv", "--output", "g.jsonl"],
          "must be harmful or benign, got 'unsafe_request'",
          files={"pool.csv": "prompt,label\nHow do I pick a lock?,unsafe_request\n"}),
        C("judge-no-response-column", "dataset", ["judge", "--input", "answers.csv", "--response-column", "answer",
                                                  "--output", "j.jsonl"], "no column 'answer'",
          files={"answers.csv": ANSWERS_CSV}),
        C("calibrate-bad-labels", "dataset", ["judge", "calibrate", "--input", "labelled.csv", "--label-column",
                                              "human"], "is not a label",
          files={"labelled.csv": "prompt,response,human\nPick a lock?,I can't help.,yes\n"}),
    ]
    # -- configs -------------------------------------------------------------------------------------------
    A = ["--output", "run"]
    S = ["--output", "study"]
    T = ["--data", "pairs.jsonl", "--output", "t"]
    L += [
        C("align-config-invalid-yaml", "config", ["align", "--config", "arm.yaml", *A], "malformed YAML",
          files={"arm.yaml": "arm: cada\ngeneration: {n: 4\nrounds: 1\n"}),
        C("align-config-unknown-key", "config", ["align", "--config", "arm.yaml", *A], "round: Extra inputs",
          files={"arm.yaml": "arm: cada\nround: 2\n"}, why="a typo of rounds"),
        C("align-config-wrong-type", "config", ["align", "--config", "arm.yaml", *A], "rounds: Input should be a "
          "valid integer", files={"arm.yaml": "arm: cada\nrounds: two\n"}),
        C("align-config-negative-count", "config", ["align", "--config", "arm.yaml", *A],
          "pool.limit_per_label: Input should be greater than or equal to 1",
          files={"arm.yaml": "pool:\n  limit_per_label: -5\n"}),
        C("align-config-nan", "config", ["align", "--config", "arm.yaml", *A], "generation.temperature",
          files={"arm.yaml": "generation:\n  temperature: .nan\n"}),
        C("align-config-is-a-study", "config", ["align", "--config", "study.yaml", *A], "a study's config",
          files={"study.yaml": "name: mine\narms: [cada, da]\n"}),
        C("align-config-utf16", "config", ["align", "--config", "arm.yaml", *A], "arm.yaml",
          files={"arm.yaml": UTF16_BOM + "arm: cada\nrounds: 1\n".encode("utf-16-le")},
          why="a config written by PowerShell's `>` (UTF-16)"),
        C("align-unknown-arm", "config", ["align", "--arm", "rlhf", *A], "arm: Input should be"),
        C("study-config-missing", "config", ["study", "--config", "recipes/demo.yml", *S],
          "recipes/demo.yml: config file not found", why="demo.yml for demo.yaml"),
        C("study-config-folder", "config", ["study", "--config", "recipes", *S], "recipes",
          dirs=("recipes",), why="the recipes folder, not a file in it"),
        C("study-config-list", "config", ["study", "--config", "study.yaml", *S], "Input should be a valid "
          "dictionary", files={"study.yaml": "- cada\n- da\n"}, why="the arms listed alone"),
        C("study-unknown-arm", "config", ["study", "--config", "study.yaml", *S], "arms.1",
          files={"study.yaml": "name: mine\narms: [cada, rlhf]\n"}),
        C("study-unknown-mode", "config", ["study", "--config", "study.yaml", *S], "base_modes.1",
          files={"study.yaml": "name: mine\nbase_modes: [none, loud]\n"}),
        C("study-unknown-suite", "config", ["study", "--config", "study.yaml", *S], "unknown suite 'everything'",
          files={"study.yaml": "name: mine\neval:\n  suite: everything\n"}),
        C("study-config-inf", "config", ["study", "--config", "study.yaml", *S], "train.learning_rate",
          files={"study.yaml": "name: mine\ntrain:\n  learning_rate: .inf\n"}),
        C("train-config-unknown-key", "config", ["train", "--config", "t.yaml", *T], "unknown field 'learning_rte'",
          files={"t.yaml": "learning_rte: 1.0e-4\n", "pairs.jsonl": PAIRS}),
        C("train-config-negative", "config", ["train", "--config", "t.yaml", *T], "epochs: Input should be "
          "greater than 0", files={"t.yaml": "epochs: -1\n", "pairs.jsonl": PAIRS}),
        C("train-unknown-method", "config", ["train", "--method", "ppo", *T], "'ppo': use one of dpo, sft, grpo",
          files={"pairs.jsonl": PAIRS}),
        C("train-lr-inf", "config", ["train", "--lr", "inf", *T], "--lr", files={"pairs.jsonl": PAIRS}),
        C("reason-temperature-nan", "config", ["reason", "hello", "--temperature", "nan"], "--temperature"),
        C("generate-temperature-inf", "config", ["generate", "--temperature", "inf", "--output", "g.jsonl"],
          "--temperature"),
        C("generate-negative-n", "config", ["generate", "--n", "-2", "--output", "g.jsonl"], "--n"),
        C("reason-unknown-mode", "config", ["reason", "hello", "--mode", "loud"], "--mode 'loud'"),
        C("eval-timeout-zero", "config", ["eval", "--benchmark", "gsm8k", "--timeout", "0", *E],
          "--timeout 0.0: Input should be greater than 0", why="0 meant as 'no timeout'"),
    ]
    # -- output paths --------------------------------------------------------------------------------------
    RO = {"ro": 0o500}
    L += [
        C("eval-output-is-a-file", "output", ["eval", "--benchmark", "gsm8k", "--limit", "1", "--output",
                                              "results.csv"], "--output results.csv: is a file, give a folder",
          files={"results.csv": "set,refusal\nadvbench,0.9\n"}),
        C("eval-output-under-a-file", "output", ["eval", "--benchmark", "gsm8k", "--output", "notes.txt/ev"],
          "notes.txt is a file, not a folder", files={"notes.txt": "my notes\n"}),
        C("judge-output-is-a-folder", "output", ["judge", "--input", "answers.csv", "--output", "judged"],
          "--output judged: is a folder, give a file", files={"answers.csv": ANSWERS_CSV,
                                                              "judged/old.jsonl": '{"label": "refuse"}\n'}),
        C("generate-output-is-a-folder", "output", ["generate", "--pool", "pool.csv", "--output", "records"],
          "--output records: is a folder, give a file", files={"pool.csv": POOL_CSV}, dirs=("records",)),
        C("demo-output-is-a-file", "output", ["demo", "--output", "demo.html"], "is a file, give a folder",
          files={"demo.html": "<html></html>\n"}),
        C("eval-output-unwritable", "output", ["eval", "--benchmark", "gsm8k", "--output", "ro/ev"],
          "cannot write there", dirs=("ro",), chmod=RO, needs="chmod"),
        C("judge-output-unwritable", "output", ["judge", "--input", "answers.csv", "--output", "ro/j.jsonl"],
          "cannot write there", files={"answers.csv": ANSWERS_CSV}, dirs=("ro",), chmod=RO, needs="chmod"),
        C("generate-output-unwritable", "output", ["generate", "--pool", "pool.csv", "--output", "ro/g.jsonl"],
          "cannot write there", files={"pool.csv": POOL_CSV}, dirs=("ro",), chmod=RO, needs="chmod"),
        C("eval-output-unwritable-root", "output", ["eval", "--benchmark", "gsm8k", "--output",
                                                    UNWRITABLE_FOR_ROOT + "/ev"], "cannot write there",
          needs="sys", why="a place no one may write, root included (the tests' own unwritable path)"),
        C("eval-suite-into-set-folder", "output", ["eval", "--suite", "demo", "--model", "<tiny>", "--output", "ev"],
          "holds a single-set evaluation", files={"ev/records.jsonl": '{"id": "a-0"}\n',
                                                  "ev/metrics.json": '{"n": 1}\n', "ev/eval.json": "{}\n"},
          why="a suite run into the folder of an earlier single-set run"),
        C("align-resume-other-config", "output", ["align", "--arm", "cada", "--model", "<tiny>", "--output", "run"],
          "started with another config", setup=_align_run_of_another_arm,
          why="the cada arm run into the da arm's run folder"),
    ]
    # -- records -------------------------------------------------------------------------------------------
    P = ["--output", "pairs.jsonl"]
    L += [
        C("pairs-empty-records", "records", ["pairs", "--records", "recs.jsonl", *P], "recs.jsonl: no records",
          files={"recs.jsonl": "\n"}),
        C("pairs-broken-middle-line", "records", ["pairs", "--records", "recs.jsonl", *P], "recs.jsonl:2:",
          files={"recs.jsonl": CHAIN + CHAIN[:60] + "\n" + CHAIN}),
        C("pairs-missing-fields", "records", ["pairs", "--records", "recs.jsonl", *P], "lacks",
          files={"recs.jsonl": '{"prompt": "How do I bake bread?", "label": "benign"}\n'}),
        C("pairs-from-eval-records", "records", ["pairs", "--records", "ev/records.jsonl", *P],
          "lacks label, sample, reward",
          files={"ev/records.jsonl": '{"id": "advbench-0", "prompt": "x", "kind": "harmful", "response": "No.", '
                                     '"judge": "refuse"}\n'}, why="the eval's records.jsonl, not generate's"),
        C("train-on-records", "records", ["train", "--data", "recs.jsonl", "--output", "t"],
          "a dpo row needs prompt/chosen/rejected", files={"recs.jsonl": CHAIN},
          why="generate's records trained on without `cada pairs`"),
    ]
    # -- models --------------------------------------------------------------------------------------------
    R = ["reason", "hello", "--mode", "none", "--max-new-tokens", "4"]
    L += [
        C("model-nonexistent-path", "model", [*R, "--model", "/nonexistent/path"], "unknown model "
          "'/nonexistent/path'"),
        C("model-hub-unreachable", "model", [*R, "--model", "nosuchorg/nosuchmodel"], "nosuchorg/nosuchmodel",
          why="a hub id without a network (HF_HUB_OFFLINE unset)"),
        C("model-is-a-file", "model", [*R, "--model", "model.safetensors"], "a model must be a folder",
          files={"model.safetensors": b"\0" * 16}),
        C("model-run-folder", "model", ["eval", "--benchmark", "gsm8k", "--limit", "1", "--model", "run", *E],
          "not a Hugging Face model folder", setup=lambda d, _: _run_folder(d),
          why="the train run folder, not run/model"),
        C("model-alias-typo", "model", ["model", "prepare", "--model", "smollm2-360m"], "unknown model "
          "'smollm2-360m'"),
        C("align-hub-model-unreachable", "model", ["align", "--model", "nosuchorg/nosuchmodel", *A],
          "nosuchorg/nosuchmodel"),
        C("model-broken-config", "model", [*R, "--model", "mymodel"], "cannot load model", setup=_broken_config),
        C("model-no-tokenizer", "model", [*R, "--model", "mymodel"], "mymodel", setup=_no_tokenizer,
          why="a folder from model.save_pretrained without tokenizer.save_pretrained"),
        C("model-device-cuda", "model", [*R, "--model", "<tiny>", "--device", "cuda"], "cuda",
          why="--device cuda on a machine without a GPU (or a CPU-only torch)"),
        C("model-max-new-tokens-over-context", "model", ["reason", "hello", "--mode", "none", "--model", "<tiny>",
                                                         "--max-new-tokens", "9000"], "max_new_tokens=9000"),
        C("train-max-length-drops-all", "model", ["train", "--data", "pairs.jsonl", "--model", "<tiny>",
                                                  "--max-length", "4", "--report-to", "none", "--output", "t"],
          "longer than", files={"pairs.jsonl": PAIRS * 2},
          why="--max-length below every example: all are dropped"),
    ]
    # -- servers -------------------------------------------------------------------------------------------
    H = ["--model", "m", "--max-retries", "0"]
    L += [
        C("reason-closed-port", "server", ["reason", "hello", "--mode", "none", "--base-url", "<closed>", *H],
          "cannot reach the server at <closed>"),
        C("eval-closed-port", "server", ["eval", "--benchmark", "gsm8k", "--limit", "1", "--base-url", "<closed>",
                                         *H, *E], "cannot reach the server at <closed>"),
        C("align-closed-port", "server", ["align", "--model", "<tiny>", "--base-url", "<closed>", *A],
          "cannot reach the server"),
        C("reason-url-without-scheme", "server", ["reason", "hello", "--mode", "none", "--base-url",
                                                  "localhost:8000/v1", "--model", "m"], "localhost:8000/v1",
          why="the URL without http://, default retries"),
        C("reason-garbage-answer", "server", ["reason", "hello", "--mode", "none", "--base-url", "<fake>", *H],
          "not JSON", server=("garbage", {})),
        C("reason-bad-utf8-answer", "server", ["reason", "hello", "--mode", "none", "--base-url", "<fake>", *H],
          "not valid UTF-8", server=("bad_utf8", {})),
        C("eval-empty-choices", "server", ["eval", "--benchmark", "gsm8k", "--limit", "1", "--base-url", "<fake>",
                                           *H, *E], "no choices", server=("empty_choices", {})),
        C("reason-http-500-retried", "server", ["reason", "hello", "--mode", "none", "--base-url", "<fake>",
                                                "--model", "m", "--max-retries", "1"], "HTTP 500",
          server=("error", {"status": 500, "message": "CUDA error: out of memory"})),
        C("reason-server-hangs", "server", ["reason", "hello", "--mode", "none", "--base-url", "<fake>", "--model",
                                            "m", "--timeout", "2", "--max-retries", "1"], "no answer within 2",
          server=("hang", {})),
        C("generate-bad-api-key", "server", ["generate", "--pool", "pool.csv", "--base-url", "<fake>", "--n", "1",
                                             "--max-new-tokens", "4", "--output", "g.jsonl", *H], "HTTP 401",
          files={"pool.csv": POOL_CSV}, server=("error", {"status": 401, "message": "Invalid API key"})),
        C("eval-prompt-over-server-context", "server", ["eval", "--benchmark", "gsm8k", "--limit", "1",
                                                        "--base-url", "<fake>", *H, *E], "longer than",
          server=("error", {"status": 400, "message": "This model's maximum context length is 2048 tokens. "
                                                      "However, you requested 30000 tokens."})),
    ]
    # -- judge ---------------------------------------------------------------------------------------------
    J = ["judge", "--input", "answers.csv", "--prompt-column", "prompt", "--output", "j.jsonl"]
    L += [
        C("judge-rubric-unreachable", "judge", [*J, "--judge", "rubric", "--judge-base-url", "<closed>",
                                                "--judge-model", "m", "--max-retries", "0"],
          "failed on every row", files={"answers.csv": ANSWERS_CSV}),
        C("judge-rubric-no-server", "judge", [*J, "--judge", "rubric"], "needs --judge-base-url",
          files={"answers.csv": ANSWERS_CSV}),
        C("judge-rubric-no-prompt-column", "judge", ["judge", "--input", "answers.csv", "--output", "j.jsonl",
                                                     "--judge", "rubric", "--judge-base-url", "<fake>",
                                                     "--judge-model", "m"], "--prompt-column",
          files={"answers.csv": ANSWERS_CSV}, server=("ok", {})),
        C("judge-unknown-name", "judge", [*J, "--judge", "strongreject"], "--judge 'strongreject'",
          files={"answers.csv": ANSWERS_CSV}),
        C("judge-head-not-a-head", "judge", [*J, "--head", "head.json"], "head.json",
          files={"answers.csv": ANSWERS_CSV, "head.json": '{"weights": "see the wiki"}\n'}),
        C("judge-without-output", "judge", ["judge", "--input", "answers.csv"], "needs --input FILE and --output",
          files={"answers.csv": ANSWERS_CSV}),
        C("eval-rubric-unreachable", "judge", ["eval", "--benchmark", "advbench", "--limit", "1", "--model",
                                               "<tiny>", "--max-new-tokens", "4", "--judge", "rubric",
                                               "--judge-base-url", "<closed>", "--judge-model", "m",
                                               "--max-retries", "0", *E], "<closed>"),
    ]
    # -- attacks (cada attack pair | pap) ------------------------------------------------------------------
    P = ["attack", "pair", "--model", "<tiny>", "--streams", "1", "--iterations", "1", "--max-new-tokens", "4",
         "--attacker-max-new-tokens", "4", "--output", "pair"]
    L += [
        C("attack-benign-benchmark", "attack", [*P, "--benchmark", "xstest-safe"], "not a harmful set",
          why="the over-refusal set given as goals"),
        C("attack-no-goals", "attack", P, "give exactly one of --benchmark NAME or --dataset FILE"),
        C("attack-goals-missing", "attack", [*P, "--dataset", "goals.csv"], "goals.csv: goals file not found"),
        C("attack-goals-no-column", "attack", [*P, "--dataset", "goals.csv"], "no column 'prompt'",
          files={"goals.csv": "goal\nPick a lock\n"}, why="the goals in a column named otherwise"),
        C("attack-unknown-technique", "attack", ["attack", "pap", "--benchmark", "advbench", "--technique",
                                                 "flattery", "--output", "pap"], "not a technique of the PAP",
          why="a technique name not in the taxonomy"),
        C("attack-attacker-url-without-model", "attack", [*P, "--benchmark", "advbench", "--attacker-base-url",
                                                          "<fake>"], "needs --attacker-model", server=("ok", {})),
        C("attack-judge-unreachable", "attack", [*P, "--benchmark", "advbench", "--judge-model", "m",
                                                 "--judge-base-url", "<closed>"], "cannot reach the server",
          why="the judge's server is down: found before the first goal"),
        C("attack-output-is-a-file", "attack", ["attack", "pair", "--benchmark", "advbench", "--output", "out.txt"],
          "out.txt", files={"out.txt": "notes\n"}),
        C("attack-zero-streams", "attack", [*P, "--benchmark", "advbench", "--streams", "0"], "--streams",
          why="a budget of no conversations"),
        C("attack-folder-of-other-settings", "attack", [*P, "--benchmark", "advbench", "--limit", "1"],
          "other settings", files={"pair/attack.json": '{"attack": "pair", "streams": 20}\n'},
          why="a PAIR folder made with another budget"),
    ]
    # -- the rest ------------------------------------------------------------------------------------------
    L += [
        C("report-not-a-study", "other", ["report", "runs"], "runs/summary.json: not found",
          files={"runs/demo/summary.json": "{}\n"}, why="the runs folder, not the study in it"),
        C("reason-empty-prompt", "other", ["reason", "  "], "the prompt is empty"),
        C("judge-train-wrong-folder", "other", ["judge", "train", "--data-dir", "xstest", "--output", "head.json"],
          "point --data-dir at the XSTest folder", dirs=("xstest",)),
    ]
    return L


# --- running one case ----------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash (folders as 'dir')."""
    found = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        try:
            found[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            found[rel] = "unreadable"
    return found


def chmod_works(base: Path) -> bool:
    """Whether a chmod 500 folder refuses this process's writes (it does not for root)."""
    d = base / ".chmod-probe"
    d.mkdir()
    d.chmod(0o500)
    try:
        (d / "x").write_text("x")
        return False
    except OSError:
        return True
    finally:
        d.chmod(0o700)
        shutil.rmtree(d, ignore_errors=True)


EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
CADA_FRAME = re.compile(r'File ".*[/\\]src[/\\]cada[/\\](?!cli[/\\]__)')
PROGRESS = re.compile(r"\s\d+/\d+\s+[\d:-]+\s+eta\s")  # a rich progress bar's last frame: "requesting 0/1 0:00:00 eta"


def error_form(lines: list[str], rc: int, prefix: str) -> tuple[str | None, str]:
    """(form, the error line) of stderr's non-empty lines, or (None, why) when they are not a clean error."""
    if len(lines) == 1 and lines[0].startswith(prefix):
        return "one line", lines[0]
    if (rc == 2 and len(lines) == 3 and lines[0].startswith("Usage:") and lines[1].startswith("Try ")
            and lines[2].startswith("Error: ")):
        return "usage", lines[2]
    warnings = [x for x in lines if x.startswith(("WARNING ", "warning: "))]
    progress = [x for x in lines if PROGRESS.search(x) and x not in warnings]
    errors = [x for x in lines if x not in warnings and x not in progress]
    if len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith(prefix):
        return ("after warnings" if warnings else "after progress bars"), errors[0]
    return None, f"{len(errors)} error lines among {len(lines)} non-empty stderr lines"


def run_case(case: dict, base: Path, subs: dict, env: dict, fake, default_timeout: float, can_chmod: bool) -> dict:
    row = {"id": case["id"], "category": case["category"], "command": ["cada", *case["args"]],
           "expected": case["expect"]}
    if case["why"]:
        row["mistake"] = case["why"]
    if case["needs"] == "chmod" and not can_chmod:
        return {**row, "outcome": "skipped", "note": "a chmod 500 folder stays writable for this user (root): "
                "not counted"}
    if case["needs"] == "sys" and not Path("/sys").is_dir():
        return {**row, "outcome": "skipped", "note": "needs Linux's /sys for a path no one may write"}
    folder = base / case["id"]
    folder.mkdir()
    for d in case["dirs"]:
        (folder / d).mkdir(parents=True, exist_ok=True)
    for name, content in case["files"].items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    if case["setup"]:
        case["setup"](folder, subs["<tiny>"])
    before = snapshot(folder)
    for name, mode in case["chmod"].items():
        (folder / name).chmod(mode)
    if case["server"]:
        mode, opts = case["server"]
        fake.reply(mode, **opts)

    def sub(text: str) -> str:
        for k, v in subs.items():
            text = text.replace(k, v)
        return text

    args = [sub(a) for a in case["args"]]
    expect = sub(case["expect"])
    timeout = case["timeout"] or default_timeout
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-m", "cada.cli", *args], capture_output=True, text=True,
                             errors="replace", cwd=folder, env=env, timeout=timeout)
        rc, out, err, timed_out = res.returncode, res.stdout, res.stderr, False
    except subprocess.TimeoutExpired as e:
        rc, timed_out = None, True
        out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode("utf-8", "replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.perf_counter() - t0
    for name in case["chmod"]:
        (folder / name).chmod(0o700)
    if case["server"]:
        fake.reply("ok")
    after = snapshot(folder)
    lines = [x for x in err.splitlines() if x.strip()]
    row.update(exit_code=rc, seconds=round(seconds, 2),
               first_stderr_line=short(lines[0], subs) if lines else "")
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    created = sorted(k for k in after if k not in before)
    if created:
        row["created"] = created
    form, line = (None, None)
    if timed_out:
        outcome, note = "other", f"still running after {timeout:.0f} s (killed)"
    elif "Traceback" in out or "Traceback" in err:
        text = (err + "\n" + out).splitlines()
        last = next((x for x in reversed(text) if EXCEPTION.match(x)), "")
        outcome, note = "traceback", short(last, subs)
        frames = [x.strip() for x in text if CADA_FRAME.search(x)]
        if frames:  # where in cada the exception passed last
            row["cada_frame"] = short(frames[-1].replace(str(ROOT) + os.sep, ""), subs)
    elif rc == 0:
        outcome, note = "other", "exit 0 on bad input"
    else:
        form, line = error_form(lines, rc, case["prefix"])
        if form is None:
            outcome, note = "other", line
        elif expect not in line:
            outcome, note = "other", f"the error lacks {case['expect']!r}"
        elif changed:
            outcome, note = "other", f"changed or lost: {', '.join(changed)}"
        else:
            outcome, note = "clean", ""
    row["outcome"] = outcome
    if form:
        row["form"] = form
    if line and form:
        row["error_line"] = short(line, subs)
    if note:
        row["note"] = note
    if outcome != "clean":
        row["stderr_tail"] = [short(x, subs) for x in lines[-4:]]
        if rc == 0:
            row["stdout_tail"] = [short(x, subs) for x in out.splitlines()[-3:]]
    return row


def short(text: str, subs: dict) -> str:
    """A line with the temporary paths and server URLs put back as placeholders, cut to 400 characters."""
    for k, v in sorted(subs.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(v, k)
    return text if len(text) <= 400 else text[:397] + "..."


# --- the run ---------------------------------------------------------------------------------------------------

def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens once the socket is closed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fault_census.json")
    ap.add_argument("--only", action="append", help="a category or case id (repeatable); default: every case")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one cada run may take")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every case tried is a lone error line "
                    "(totals_strict); by default usage errors and errors after warnings or progress bars pass")
    a = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "tests"))
    from fake_openai import FakeOpenAI

    from cada.models.load import resolve_model

    chosen = [c for c in cases() if not a.only or c["id"] in a.only or c["category"] in a.only]
    if not chosen:
        ap.error(f"--only {a.only}: no such case or category")
    env = {k: v for k, v in os.environ.items() if k not in (
        "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CADA_BASE_URL", "CADA_API_KEY", "CADA_JUDGE_BASE_URL",
        "CADA_JUDGE_API_KEY")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", TOKENIZERS_PARALLELISM="false")
    t_all = time.perf_counter()
    rows = []
    fake = FakeOpenAI()
    base = Path(tempfile.mkdtemp(prefix="cada-fault-census-"))
    try:
        tiny = base / "tiny-model"
        shutil.copytree(resolve_model("tiny-random"), tiny)  # as the tests' tiny_model fixture builds it
        (base / "cases").mkdir()
        subs = {"<tiny>": str(tiny), "<fake>": fake.base_url, "<closed>": closed_port_url(), "<tmp>": str(base)}
        can_chmod = chmod_works(base)
        print(f"{'case':<36} {'category':<8} {'outcome':<9} {'exit':>4} {'s':>6}  first stderr line", flush=True)
        for case in chosen:
            row = run_case(case, base / "cases", subs, env, fake, a.timeout, can_chmod)
            rows.append(row)
            shown = row.get("note") if row["outcome"] not in ("clean",) else row.get("error_line", "")
            print(f"{row['id']:<36} {row['category']:<8} {row['outcome']:<9} {str(row.get('exit_code', '')):>4} "
                  f"{row.get('seconds', 0):>6.1f}  {(shown or '')[:110]}", flush=True)
    finally:
        fake.close()
        for p in base.rglob("*"):  # a chmod 500 folder left by an interrupted case
            if p.is_dir() and not os.access(p, os.W_OK):
                p.chmod(stat.S_IRWXU)
        shutil.rmtree(base, ignore_errors=True)
    tried = [r for r in rows if r["outcome"] != "skipped"]
    totals = {"tried": len(tried), **{k: sum(r["outcome"] == k for r in tried) for k in ("clean", "traceback",
                                                                                         "other")},
              "skipped": len(rows) - len(tried)}
    forms: dict[str, int] = {}
    for r in tried:
        if r["outcome"] == "clean":
            forms[r["form"]] = forms.get(r["form"], 0) + 1
    lone = sum(r["outcome"] == "clean" and r["form"] == "one line" for r in tried)
    strict = {**totals, "clean": lone, "other": totals["other"] + totals["clean"] - lone}
    result = {"about": "bad inputs against the cada CLI (benchmarks/fault_census.py), each run in a folder of its "
                       "own (<tmp>/cases/<id>; <tiny>: the tiny random model, <fake>: the fake OpenAI-compatible "
                       "server, <closed>: a closed loopback port); clean = non-zero exit, no traceback, one error "
                       "line with the expected words, nothing in the folder changed (forms: see the script)",
              "python": sys.version.split()[0], "root": hasattr(os, "geteuid") and os.geteuid() == 0,
              "seconds": round(time.perf_counter() - t_all, 1), "totals": totals, "clean_forms": forms,
              "totals_strict": strict, "not_clean": [r["id"] for r in tried if r["outcome"] != "clean"],
              "cases": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"\ntried {totals['tried']}: clean {totals['clean']} ({', '.join(f'{v} {k}' for k, v in forms.items())}),"
          f" traceback {totals['traceback']}, other {totals['other']}; skipped {totals['skipped']}; "
          f"{result['seconds']:.0f} s -> {a.out}")
    print(f"strict (a lone error line only): clean {strict['clean']}, traceback {strict['traceback']}, other "
          f"{strict['other']}")
    for r in tried:
        if r["outcome"] != "clean":
            print(f"  {r['outcome']}: {r['id']}: {' '.join(r['command'])}\n      {r.get('note', '')}")
    return 0 if (strict if a.strict else totals)["clean"] == totals["tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
