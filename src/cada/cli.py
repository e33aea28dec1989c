"""The ``cada`` command: a thin typer app; every command calls one library function."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cada import __version__
from cada.config import (DEFAULT_MODEL, AlignConfig, EvalConfig, EvalSet, GenConfig, PoolConfig, Recipe,
                         SelfGenConfig, TrainConfig, describe)
from cada.errors import CadaError


# rich help panels only on a terminal of 100+ columns: on a narrow one, and when piped (rich then draws 80
# columns), they would cut long option names such as --calibration-per-label; click's plain help wraps instead
_MARKUP = "rich" if shutil.get_terminal_size((80, 24)).columns >= 100 else None
_VLLM_EXTRA = "\\[vllm]" if _MARKUP else "[vllm]"  # rich would read [vllm] as markup and drop it
app = typer.Typer(help="Case-Augmented Deliberative Alignment: safer LLMs from statutes and precedents.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=_MARKUP)
spec_app = typer.Typer(help="Inspect and validate safety specs (statutes, codes, precedents).",
                       no_args_is_help=True, rich_markup_mode=_MARKUP)
model_app = typer.Typer(help="Prepare models (the embedded one is converted once, then cached).",
                        no_args_is_help=True, rich_markup_mode=_MARKUP)
judge_app = typer.Typer(help="Judge final responses: the offline refusal judge or the StrongREJECT rubric "
                        "judge over an OpenAI-compatible server; train and calibrate the refusal judge.",
                        invoke_without_command=True, no_args_is_help=True, rich_markup_mode=_MARKUP)
app.add_typer(spec_app, name="spec")
app.add_typer(model_app, name="model")
app.add_typer(judge_app, name="judge")

out = Console() if sys.stdout.isatty() else Console(width=160)  # piped output: tables without wrapping
err = Console(stderr=True, soft_wrap=True)  # errors and warnings stay one line each, whatever the width

# shared options ---------------------------------------------------------------------------------
def _opt(cls, name: str, *flags: str, **kw):
    """A flag whose help is the config field's description (one help text per setting); its default is None, so
    it overrides a config file only when given."""
    return typer.Option(*flags, help=describe(cls, name), **kw)


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Embedded alias (smollm2-135m), local HF folder, "
                                       "or hub id (downloads only then).")]
SpecOpt = Annotated[Optional[Path], typer.Option("--spec", help="Spec folder or YAML file (default: the shipped "
                                                 "spec).")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", envvar="CADA_BASE_URL",
                                                   help="OpenAI-compatible server (e.g. vLLM); generation goes "
                                                   "there instead of a local model.")]
ApiKeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar="CADA_API_KEY", show_default=False,
                                                  help="API key for --base-url (better: set CADA_API_KEY).")]
BackendOpt = Annotated[str, typer.Option("--backend", help="auto (HTTP with --base-url, else local) | local | http "
                                         "| vllm (offline engine; pip install -e "
                                         f"'.{_VLLM_EXTRA}' in the cada checkout).")]
TPOpt = Annotated[int, typer.Option("--tensor-parallel-size", min=1, help="GPUs for --backend vllm.")]
JudgeUrlOpt = Annotated[Optional[str], typer.Option("--judge-base-url", "--base-url", envvar="CADA_JUDGE_BASE_URL",
                                                    help="OpenAI-compatible server of the rubric judge.")]
JudgeModelOpt = Annotated[Optional[str], typer.Option("--judge-model", "--model", "-m",
                                                      help="Rubric judge model name on that server.")]
JudgeKeyOpt = Annotated[Optional[str], typer.Option("--judge-api-key", "--api-key", envvar="CADA_JUDGE_API_KEY",
                                                    show_default=False, help="API key of the judge server (better: "
                                                    "set CADA_JUDGE_API_KEY; else CADA_API_KEY is used).")]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight over HTTP.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"cada {__version__}")
        raise typer.Exit()


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if not verbose:
            hf_logging.set_verbosity_error()
    except ImportError:
        pass
    if not verbose:  # TRL prepares its datasets with `datasets` maps, each with its own bar; cada's bars suffice
        try:
            import datasets

            datasets.disable_progress_bars()
        except ImportError:
            pass


# spec -------------------------------------------------------------------------------------------
@spec_app.command("validate")
def spec_validate(path: Annotated[Path, typer.Argument(help="Spec folder or YAML file.")],
                  no_overlap: Annotated[bool, typer.Option("--no-overlap", help="Skip the check of the cases "
                                                           "against the evaluation sets.")] = False) -> None:
    """Check a spec; print PATH:LINE: problem lines and exit non-zero when it is invalid. Warn about cases that
    overlap (or reword) an evaluation prompt."""
    from cada.spec.schema import SpecError, load_spec

    try:
        spec = load_spec(path)
    except SpecError as e:
        for p in e.problems:
            err.print(p, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    counts = spec.verdict_counts()
    out.print(f"{path}: valid spec {spec.name!r}: {len(spec.statutes)} statutes, {len(spec.categories)} "
              f"categories, {len(spec.codes.rules)} rules, {len(spec.cases)} cases "
              f"({', '.join(f'{v} {k}' for k, v in counts.items())})", markup=False, highlight=False)
    if not no_overlap:
        from cada.data.decontam import spec_eval_overlap

        # a case sits in the prompt of every `cases` answer: one that is (or rewords) an evaluation prompt leaks it
        for f in spec_eval_overlap(spec):
            err.print(f"{path}: warning: case {f['case']} overlaps a {f['eval_set']} evaluation prompt ({f['kind']}, "
                      f"similarity {f['similarity']}); reword it, or results on that benchmark are not clean",
                      markup=False, highlight=False)


@spec_app.command("show")
def spec_show(spec: SpecOpt = None,
              cases: Annotated[bool, typer.Option("--cases", help="List every case too.")] = False) -> None:
    """Print the statutes, the categories with case counts by verdict, and optionally the cases."""
    from cada.spec.schema import Verdict, load_spec

    s = load_spec(spec)
    out.print(f"[bold]{s.name}[/] (version {s.version})\n")
    out.print("[bold]Statutes[/]")
    for st in s.statutes:
        out.print(f"  [cyan]{st.id}[/] {st.text}", highlight=False)
    table = Table(title="Categories and precedents", show_lines=False)
    table.add_column("category")
    table.add_column("rule")
    for v in Verdict:
        table.add_column(v.value, justify="right")
    rules = {r.category: r.id for r in s.codes.rules}
    for c in s.categories:
        row = [sum(1 for x in s.cases if x.category == c.id and x.verdict is v) for v in Verdict]
        table.add_row(f"{c.name} ({c.id})", rules.get(c.id, "-"), *map(str, row))
    totals = s.verdict_counts()
    table.add_row("[bold]total[/]", str(len(s.codes.rules)), *(f"[bold]{totals[v.value]}[/]" for v in Verdict))
    out.print(table)
    if cases:
        for c in s.cases:
            out.print(f"[cyan]{c.id}[/] \\[{c.category}] [bold]{c.verdict.value}[/]: {escape(c.request)}",
                      highlight=False)


# model ------------------------------------------------------------------------------------------
@model_app.command("prepare")
def model_prepare(model: ModelOpt = "smollm2-135m") -> None:
    """Resolve a model (converting the embedded GGUF on first use) and print its local path."""
    from cada.models.load import resolve_model

    out.print(resolve_model(model), markup=False, highlight=False)


# reason -----------------------------------------------------------------------------------------
@app.command("reason")
def reason(
    prompt: Annotated[str, typer.Argument(help="The user request.")],
    mode: Annotated[str, typer.Option("--mode", help="none (w/o SR) | codes (SR w S) | cases (SR w C).")] = "cases",
    model: ModelOpt = "smollm2-135m",
    spec: SpecOpt = None,
    k: Annotated[int, typer.Option("--k", min=0, help="Precedents in the prompt for --mode cases: the k most "
                                   "similar by embedding; 0 = all.")] = 6,
    max_new_tokens: Annotated[int, _opt(GenConfig, "max_new_tokens", "--max-new-tokens", min=1)
                              ] = GenConfig().max_new_tokens,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, ... (default: auto).")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
) -> None:
    """Answer one request under a safety-reasoning mode; print the reasoning and the final response."""
    from cada.models.generate import SamplingParams, make_generator
    from cada.reasoning import Mode, SafetyReasoner
    from cada.spec.schema import load_spec

    if not prompt.strip():
        raise CadaError("the prompt is empty: give the request to answer, e.g. cada reason \"How do I ...?\"")
    try:
        mode_ = Mode(mode)
    except ValueError:
        raise CadaError(f"--mode {mode!r}: use none, codes or cases") from None
    s = load_spec(spec)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    gen = make_generator(model, base_url=base_url, api_key=api_key, device=device,
                         trust_remote_code=trust_remote_code, show_progress=False)
    result = SafetyReasoner(s, mode_, k=k).run(gen, [prompt], params)[0][0]
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    if mode_ is not Mode.none:
        out.rule("reasoning")
        out.print(result.reasoning or "[dim](none given)[/]", markup=not result.reasoning and True,
                  highlight=False)
    out.rule("final response")
    out.print(result.response, markup=False, highlight=False)
    if mode_ is not Mode.none:
        notes = [f"format_ok={result.format_ok}"]
        if result.context_cases:
            notes.append(f"precedents in context: {', '.join(result.context_cases)}")
        notes.append(f"cited: {', '.join(result.cited_cases) or '-'}")
        err.print("[dim]" + "; ".join(notes) + "[/]", highlight=False)


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
) -> None:
    """Judge every row of a file: cada judge --input FILE --response-column COL --output OUT.jsonl."""
    if ctx.invoked_subcommand is not None:
        return
    from cada.judges.batch import judge_file

    if input is None or output is None:
        raise CadaError("cada judge needs --input FILE and --output OUT.jsonl (or a subcommand: train, calibrate)")
    generator = None
    if judge == "rubric":
        if not base_url:
            raise CadaError("--judge rubric needs --judge-base-url (or $CADA_JUDGE_BASE_URL) and --judge-model of "
                            "an OpenAI-compatible server")
        from cada.models.generate import OpenAIGenerator

        generator = OpenAIGenerator(base_url, model or "default", api_key=api_key, concurrency=concurrency)
    summary = judge_file(input, output, judge=judge, response_column=response_column, prompt_column=prompt_column,
                         head=head, generator=generator)
    out.print_json(data=summary)


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

    report = calibrate(input, label_column, response_column=response_column, prompt_column=prompt_column,
                       head=head)
    if as_json:
        print(json.dumps(report))
    else:
        out.print(report_text(report), markup=False, highlight=False)


# training ---------------------------------------------------------------------------------------
@app.command("generate")
def generate_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Records JSONL (appended; resumes).")],
    pool: Annotated[Optional[Path], typer.Option("--pool", help="Prompt pool (JSONL from `cada align`, or a "
                                                 "CSV/JSON/JSONL with prompt,label[,category]); default: "
                                                 "the shipped training pools.")] = None,
    mode: Annotated[Optional[str], _opt(SelfGenConfig, "mode", "--mode")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    spec: SpecOpt = None,
    n: Annotated[Optional[int], _opt(SelfGenConfig, "n", "--n")] = None,
    k: Annotated[Optional[int], _opt(SelfGenConfig, "k", "--k")] = None,
    temperature: Annotated[Optional[float], _opt(SelfGenConfig, "temperature", "--temperature")] = None,
    max_new_tokens: Annotated[Optional[int], _opt(SelfGenConfig, "max_new_tokens", "--max-new-tokens")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many prompts per label.")
                     ] = None,
    seed: Annotated[Optional[int], _opt(SelfGenConfig, "seed", "--seed")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    backend: BackendOpt = "auto",
    tensor_parallel_size: TPOpt = 1,
    concurrency: ConcurrencyOpt = 8,
) -> None:
    """Self-generate N judged safety-reasoning chains per prompt (resumable JSONL records)."""
    from cada.models.generate import make_generator
    from cada.pipeline.pools import generation_prompts
    from cada.selfgen import self_generate, summarize
    from cada.spec.schema import load_spec

    cfg = SelfGenConfig().with_values({"mode": mode, "n": n, "k": k, "temperature": temperature,
                                       "max_new_tokens": max_new_tokens, "seed": seed})
    s = load_spec(spec)
    prompts, removed = generation_prompts(pool, limit, cfg.seed)
    if removed:
        err.print(f"{pool}: {removed} prompts overlap an evaluation prompt (exactly, nearly or reworded) and were "
                  "left out", markup=False, highlight=False)
    gen = make_generator(model, base_url=base_url, api_key=api_key, backend=backend,
                         tensor_parallel_size=tensor_parallel_size, concurrency=concurrency)
    records = self_generate(prompts, gen, s, output, cfg)
    out.print_json(data={"records": len(records), "output": str(output), **summarize(records)})


@app.command("pairs")
def pairs_cmd(
    records: Annotated[Path, typer.Option("--records", help="Records JSONL from `cada generate`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Training set JSONL.")],
    kind: Annotated[str, typer.Option("--kind", help="dpo | sft-dr | sft-sc | sft-cr.")] = "dpo",
    spec: SpecOpt = None,
    no_fallback: Annotated[bool, typer.Option("--no-fallback", help="DPO: skip prompts without a good own "
                                              "sample instead of writing a precedent-grounded chain.")] = False,
    consistency: Annotated[bool, typer.Option("--consistency/--no-consistency",
                                              help=describe(Recipe, "consistency"))] = False,
) -> None:
    """Build context-distilled DPO pairs or an SFT set from self-generated records."""
    from cada.datasets import dpo_pairs, sft_set
    from cada.records import read_records, require, write_records
    from cada.spec.schema import load_spec

    if not records.is_file():
        raise CadaError(f"{records}: records file not found")
    if kind not in ("dpo", "sft-dr", "sft-sc", "sft-cr"):
        raise CadaError(f"--kind {kind!r}: use dpo, sft-dr, sft-sc or sft-cr")
    s = load_spec(spec)
    recs = read_records(records)
    require(recs, "chain", records)
    if kind == "dpo":
        rows, stats = dpo_pairs(recs, s, precedent_fallback=not no_fallback, consistency=consistency)
    else:
        rows, stats = sft_set(recs, s, kind.split("-")[1])
    write_records(output, rows)
    out.print_json(data={"output": str(output), **stats})


@app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="JSONL: DPO pairs, SFT messages, or GRPO prompts with a "
                                       "label column.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder; the model lands in OUTPUT/model.")],
    method: Annotated[Optional[str], _opt(TrainConfig, "method", "--method")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML of TrainConfig fields (its `extra` goes "
                                                   "to the TRL config as is); flags override it.")] = None,
    lr: Annotated[Optional[float], _opt(TrainConfig, "learning_rate", "--lr")] = None,
    epochs: Annotated[Optional[float], _opt(TrainConfig, "epochs", "--epochs")] = None,
    batch_size: Annotated[Optional[int], _opt(TrainConfig, "batch_size", "--batch-size")] = None,
    grad_accum: Annotated[Optional[int], _opt(TrainConfig, "grad_accum", "--grad-accum")] = None,
    beta: Annotated[Optional[float], _opt(TrainConfig, "beta", "--beta")] = None,
    sft_weight: Annotated[Optional[float], _opt(TrainConfig, "sft_weight", "--sft-weight")] = None,
    lora_r: Annotated[Optional[int], _opt(TrainConfig, "lora_r", "--lora-r")] = None,
    top_layers: Annotated[Optional[int], _opt(TrainConfig, "top_layers", "--top-layers")] = None,
    max_length: Annotated[Optional[int], _opt(TrainConfig, "max_length", "--max-length")] = None,
    no_merge: Annotated[bool, typer.Option("--no-merge", help="Keep only the LoRA adapter.")] = False,
    seed: Annotated[Optional[int], _opt(TrainConfig, "seed", "--seed")] = None,
    report_to: Annotated[Optional[str], _opt(TrainConfig, "report_to", "--report-to")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
) -> None:
    """Train with TRL (DPO, SFT or GRPO; LoRA by default). Works under `accelerate launch`."""
    from cada.train import load_train_config, train

    fields = load_train_config(config) if config else {}
    flags = {"method": method, "learning_rate": lr, "epochs": epochs, "batch_size": batch_size,
             "grad_accum": grad_accum, "beta": beta, "sft_weight": sft_weight, "lora_r": lora_r,
             "top_layers": top_layers, "max_length": max_length, "seed": seed, "report_to": report_to,
             "merge": False if no_merge else None}
    fields.update({k: v for k, v in flags.items() if v is not None})
    cfg = TrainConfig().with_values(fields)
    path = train(model, data, output, cfg, trust_remote_code=trust_remote_code)
    out.print(f"model: {path}", markup=False, highlight=False)


@app.command("align")
def align_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (resumes when it exists).")],
    arm: Annotated[Optional[str], _opt(AlignConfig, "arm", "--arm")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML AlignConfig (see recipes/); flags "
                                                   "below override it.")] = None,
    model: Annotated[Optional[str], _opt(AlignConfig, "model", "--model", "-m")] = None,
    spec: SpecOpt = None,
    pool: Annotated[Optional[Path], _opt(PoolConfig, "user_pool", "--pool")] = None,
    limit: Annotated[Optional[int], _opt(PoolConfig, "limit_per_label", "--limit", min=1)] = None,
    n: Annotated[Optional[int], _opt(GenConfig, "n", "--n", min=1)] = None,
    rounds: Annotated[Optional[int], _opt(AlignConfig, "rounds", "--rounds", min=1)] = None,
    warmup: Annotated[Optional[bool], _opt(AlignConfig, "warmup", "--warmup/--no-warmup")] = None,
    warmup_per_label: Annotated[Optional[int], _opt(AlignConfig, "warmup_per_label", "--warmup-per-label",
                                                    min=1)] = None,
    judgement: Annotated[Optional[bool], _opt(AlignConfig, "judgement", "--judgement/--no-judgement")] = None,
    judgement_per_label: Annotated[Optional[int], _opt(AlignConfig, "judgement_per_label",
                                                       "--judgement-per-label", min=1)] = None,
    calibration_per_label: Annotated[Optional[int], _opt(AlignConfig, "calibration_per_label",
                                                         "--calibration-per-label", min=2)] = None,
    base_url: BaseUrlOpt = None,
) -> None:
    """Run one arm end to end: pools, self-generation, judged pairs/SFT set, training."""
    from cada.pipeline.align import align

    cfg = AlignConfig.from_yaml(config) if config else AlignConfig()
    cfg = cfg.with_values({"arm": arm, "model": model, "spec": str(spec) if spec else None, "rounds": rounds,
                           "warmup": warmup, "base_url": base_url, "warmup_per_label": warmup_per_label,
                           "judgement": judgement, "judgement_per_label": judgement_per_label,
                           "calibration_per_label": calibration_per_label,
                           "pool.user_pool": str(pool) if pool else None, "pool.limit_per_label": limit,
                           "generation.n": n})
    summary = align(cfg, output)
    out.print_json(data=summary)


# evaluation, study, demo -------------------------------------------------------------------------
def _rate(m: dict, key: str) -> str:
    r = m.get(key)
    if not isinstance(r, dict) or r.get("value") is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{r['value']:.2f} [{lo:.2f}, {hi:.2f}]"


def _metrics_table(rows: dict[str, dict], title: str) -> Table:
    t = Table(title=title)
    for c in ("set", "n", "refusal", "partial", "compliance", "accuracy"):
        t.add_column(c)
    for name, m in rows.items():
        t.add_row(name, str(m.get("n", 0)), _rate(m, "refusal_rate"), _rate(m, "partial_rate"),
                  _rate(m, "compliance_rate"), _rate(m, "accuracy"))
    return t


@app.command("eval")
def eval_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for records.jsonl + metrics.json "
                                         "(resumes when it exists).")],
    model: ModelOpt = DEFAULT_MODEL,
    dataset: Annotated[Optional[Path], _opt(EvalSet, "file", "--dataset")] = None,
    prompt_column: Annotated[str, _opt(EvalSet, "prompt_column", "--prompt-column")] = "prompt",
    kind: Annotated[Optional[str], _opt(EvalSet, "kind", "--kind")] = None,
    spec: SpecOpt = None,
    reference_column: Annotated[Optional[str], _opt(EvalSet, "reference_column", "--reference-column")] = None,
    benchmark: Annotated[Optional[str], _opt(EvalSet, "benchmark", "--benchmark", "-b")] = None,
    suite: Annotated[Optional[str], typer.Option("--suite", help="Named suite: default | demo | full (one "
                                                 "subfolder per set).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="none | codes | cases.")] = "none",
    attack: Annotated[Optional[list[str]], _opt(EvalSet, "attacks", "--attack")] = None,
    attack_file: Annotated[Optional[Path], _opt(EvalSet, "attack_file", "--attack-file")] = None,
    attack_column: Annotated[str, _opt(EvalSet, "attack_column", "--attack-column")] = "prompt",
    templates: Annotated[Optional[int], _opt(EvalSet, "templates", "--templates", min=1)] = None,
    limit: Annotated[Optional[int], _opt(EvalSet, "limit", "--limit", min=1)] = None,
    max_new_tokens: Annotated[Optional[int], _opt(EvalConfig, "max_new_tokens", "--max-new-tokens", min=1)] = None,
    k: Annotated[Optional[int], _opt(EvalConfig, "k", "--k", min=0)] = None,
    judge: Annotated[Optional[str], _opt(EvalConfig, "judge", "--judge")] = None,
    judge_base_url: Annotated[Optional[str], _opt(EvalConfig, "judge_base_url", "--judge-base-url",
                                                  envvar="CADA_JUDGE_BASE_URL")] = None,
    judge_model: Annotated[Optional[str], _opt(EvalConfig, "judge_model", "--judge-model")] = None,
    judge_api_key: Annotated[Optional[str], typer.Option("--judge-api-key", envvar="CADA_JUDGE_API_KEY",
                                                         show_default=False, help="API key of the judge server "
                                                         "(better: set CADA_JUDGE_API_KEY; else CADA_API_KEY).")
                             ] = None,
    batch_size: Annotated[Optional[int], _opt(EvalConfig, "batch_size", "--batch-size", min=1)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    backend: BackendOpt = "auto",
    tensor_parallel_size: TPOpt = 1,
    concurrency: ConcurrencyOpt = 8,
) -> None:
    """Evaluate a model on a benchmark, your own file, or a named suite; rates with 95% bootstrap intervals."""
    from cada.config import suite as named_suite
    from cada.evaluate.run import evaluate_model, load_sets, make_judges
    from cada.models.generate import make_generator
    from cada.reasoning import Mode
    from cada.records import write_json
    from cada.spec.schema import load_spec

    try:
        Mode(mode)
    except ValueError:
        raise CadaError(f"--mode {mode!r}: use none, codes or cases") from None
    if judge is not None and judge not in ("refusal", "rubric"):
        raise CadaError(f"--judge {judge!r}: use refusal or rubric")
    chosen = [x for x in (dataset, benchmark, suite) if x is not None]
    if len(chosen) != 1:
        raise CadaError("give exactly one of --dataset FILE, --benchmark NAME or --suite NAME")
    if dataset is not None:
        if not dataset.is_file():
            raise CadaError(f"{dataset}: dataset file not found")
        if kind is None:
            raise CadaError("--kind is required with --dataset: harmful, benign or utility")
        if kind not in ("harmful", "benign", "utility"):
            raise CadaError(f"--kind {kind!r}: use harmful, benign or utility")
    attacks = {"attacks": attack, "templates": templates, "limit": limit,
               "attack_file": str(attack_file) if attack_file else None, "attack_column": attack_column}
    if suite is not None:
        sets = [x.with_values({"limit": limit}) for x in named_suite(suite)]
    elif dataset is not None:
        sets = [EvalSet(name=dataset.stem, file=str(dataset), prompt_column=prompt_column, kind=kind,
                        reference_column=reference_column).with_values(attacks)]
    else:
        sets = [EvalSet(name=benchmark).with_values(attacks)]
    if attack_file is not None and not attack_file.is_file():
        raise CadaError(f"{attack_file}: attack file not found")
    cfg = EvalConfig().with_values({"max_new_tokens": max_new_tokens, "k": k, "judge": judge,
                                    "judge_base_url": judge_base_url, "judge_model": judge_model,
                                    "batch_size": batch_size})
    # the judge's own key: the policy server's --api-key is never sent to another server
    judges = make_judges(cfg, api_key=judge_api_key)
    loaded = load_sets(sets)
    s = load_spec(spec)
    gen = make_generator(model, base_url=base_url, api_key=api_key, batch_size=cfg.batch_size, backend=backend,
                         tensor_parallel_size=tensor_parallel_size, concurrency=concurrency)
    results = evaluate_model(gen, loaded, s, lambda es: output if suite is None else output / es.name, cfg,
                             mode=mode, judges=judges, seed=seed)
    if suite is not None:
        write_json(output / "metrics.json", results)
    out.print(_metrics_table(results, f"{model} ({mode})"))
    for name, m in results.items():
        if "by_attack" in m:
            out.print(_metrics_table(m["by_attack"], f"{name}: by attack"))
    out.print(f"wrote {output}", markup=False, highlight=False)


def _print_summary(summary: dict, output: Path) -> None:
    t = Table(title=f"{summary.get('name', 'study')}: headline (refused or partial; accuracy for GSM8K)")
    cols = ("harmful_refusal", "jailbreak_refusal", "benign_refusal", "gsm8k_accuracy", "reference_loglik")
    t.add_column("system")
    for c in cols:
        t.add_column(c.replace("_", " "))
    for name, h in summary["headline"].items():
        t.add_row(summary["systems"][name]["label"], *("-" if h.get(c) is None else f"{h[c]:.2f}" for c in cols))
    out.print(t)
    report = summary.get("report", {})
    out.print(f"wall time: {summary.get('wall_seconds', 0) / 60:.1f} min", markup=False, highlight=False)
    if report:
        out.print(f"report: {report.get('html')}", markup=False, highlight=False)
    out.print(f"summary: {output / 'summary.json'}", markup=False, highlight=False)


@app.command("study")
def study_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Study YAML (see recipes/), or a shipped preset "
                                         "by name (demo).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Study folder (resumes when it "
                                                   "exists); default runs/<name>.")] = None,
) -> None:
    """Run the paper's study at any size from a YAML config: base x reasoning modes, trained arms, report."""
    from cada.config import load_study
    from cada.pipeline.study import run_study

    cfg = load_study(config)
    output = output or Path("runs") / cfg.name
    _print_summary(run_study(cfg, output), output)


@app.command("demo")
def demo_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Study folder (resumes when it exists).")] = Path(
        "runs/demo"),
    model: ModelOpt = "smollm2-135m",
) -> None:
    """The whole study at CPU size on the embedded model (about 15 minutes on two cores), with a report."""
    from cada.config import demo_config
    from cada.pipeline.study import run_study

    _print_summary(run_study(demo_config(model), output), output)


@app.command("report")
def report_cmd(study: Annotated[Path, typer.Argument(help="Study folder (holds summary.json).")]) -> None:
    """(Re)write a study's report: HTML (self-contained), markdown and JSON."""
    from cada.report import write_report

    for kind, path in write_report(study).items():
        out.print(f"{kind}: {path}", markup=False, highlight=False)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 1."""
    try:
        app()
    except CadaError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
