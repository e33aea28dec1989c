"""``cada judge``: judge a file's responses; train and calibrate the refusal judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from cada.cli.app import (JudgeKeyOpt, JudgeModelOpt, JudgeUrlOpt, RetriesOpt, TimeoutOpt, err, http_settings,
                          judge_app, out)
from cada.errors import CadaError

# judge ------------------------------------------------------------------------------------------
InputOpt = Annotated[Optional[Path], typer.Option("--input", "-i", help="CSV, JSON or JSONL file.")]
ResponseColOpt = Annotated[str, typer.Option("--response-column", help="Column with the responses (only the "
                                             "final response is judged).")]
PromptColOpt = Annotated[Optional[str], typer.Option("--prompt-column", help="Column with the prompts.")]
HeadOpt = Annotated[Optional[Path], typer.Option("--head", help="A refusal-judge head file (default: the "
                                                 "shipped one).")]


@judge_app.callback()
def judge_cmd(
    ctx: typer.Context,
    input: InputOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="JSONL: every input row plus label "
                                                   "(and the rubric scores).")] = None,
    judge: Annotated[str, typer.Option("--judge", help="refusal (offline) | rubric (StrongREJECT, needs "
                                       "--judge-base-url).")] = "refusal",
    response_column: ResponseColOpt = "response",
    prompt_column: PromptColOpt = None,
    head: HeadOpt = None,
    model: JudgeModelOpt = None,
    base_url: JudgeUrlOpt = None,
    api_key: JudgeKeyOpt = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Rubric judge requests in flight.")] = 8,
    timeout: TimeoutOpt = None,
    max_retries: RetriesOpt = None,
) -> None:
    """Judge every row of a file: cada judge --input FILE --response-column COL --output OUT.jsonl."""
    if ctx.invoked_subcommand is not None:
        return
    from cada.judges.batch import judge_file
    from cada.records import check_input, check_writable

    if input is None or output is None:
        raise CadaError("cada judge needs --input FILE and --output OUT.jsonl (or a subcommand: train, calibrate)")
    http = http_settings(timeout, max_retries)
    check_input(input, "--input", "input file")
    if head is not None:
        check_input(head, "--head", "refusal-head file")
    check_writable(output, folder=False)
    generator = None
    if judge == "rubric":
        if not base_url:
            raise CadaError("--judge rubric needs --judge-base-url (or $CADA_JUDGE_BASE_URL) and --judge-model of "
                            "an OpenAI-compatible server")
        from cada.models.http import OpenAIGenerator

        generator = OpenAIGenerator(base_url, model or "default", api_key=api_key, concurrency=concurrency, **http)
    summary = judge_file(input, output, judge=judge, response_column=response_column, prompt_column=prompt_column,
                         head=head, generator=generator)
    out.print_json(data=summary)
    failed, n = summary.get("failed", 0), summary["n"]
    if failed:  # what was judged is written either way; the failed rows have label null and their error
        first = " ".join(str(summary.get("first_error") or "").split())[:200]
        if failed == n:
            raise CadaError(f"{output}: the {judge} judge failed on every row ({n} of {n}; first: {first}); check "
                            "--judge-base-url, --judge-model and the server")
        err.print(f"warning: the {judge} judge failed on {failed} of {n} rows (label null, error set in {output}; "
                  f"first: {first})", markup=False, highlight=False)


@judge_app.command("train")
def judge_train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Head file to write (JSON).")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Folder with the XSTest completion CSVs "
                                           "(model_completions__xstest_v2_completions_<model>.csv).")],
    models: Annotated[Optional[list[str]], typer.Option("--model", help="Completion sets to train on "
                                                        "(repeatable; default: all four).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Retrain the refusal judge's head reproducibly (same data and seed -> identical file)."""
    from cada.judges.training import XSTEST_MODELS, train_refusal_judge

    train_refusal_judge(data_dir, output, seed=seed, models=models or XSTEST_MODELS)
    out.print(f"wrote {output}", markup=False, highlight=False)


@judge_app.command("calibrate")
def judge_calibrate(
    input: Annotated[Path, typer.Option("--input", "-i", help="CSV, JSON or JSONL with human labels.")],
    label_column: Annotated[str, typer.Option("--label-column", help="comply/refuse/partial (or XSTest's "
                                              "1_full_compliance, ...).")],
    response_column: ResponseColOpt = "response",
    prompt_column: PromptColOpt = None,
    head: HeadOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Accuracy, per-class precision/recall and the confusion matrix of the refusal judge against human labels."""
    from cada.judges.batch import calibrate, report_text
    from cada.records import check_input

    check_input(input, "--input", "input file")
    if head is not None:
        check_input(head, "--head", "refusal-head file")
    report = calibrate(input, label_column, response_column=response_column, prompt_column=prompt_column,
                       head=head)
    if as_json:
        print(json.dumps(report))
    else:
        out.print(report_text(report), markup=False, highlight=False)


