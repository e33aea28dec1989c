"""``cada generate``, ``cada pairs``, ``cada train`` and ``cada align``: the training commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cada.cli.app import (ApiKeyOpt, BackendOpt, BaseUrlOpt, ConcurrencyOpt, ModelOpt, RetriesOpt, SpecOpt,
                          TimeoutOpt, TPOpt, app, err, http_settings, option, out)
from cada.config import (DEFAULT_MODEL, AlignConfig, GenConfig, PoolConfig, Recipe, SelfGenConfig, TrainConfig,
                         describe)
from cada.errors import CadaError


# training ---------------------------------------------------------------------------------------
@app.command("generate")
def generate_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Records JSONL (appended; resumes).")],
    pool: Annotated[Optional[Path], typer.Option("--pool", help="Prompt pool (JSONL from `cada align`, or a "
                                                 "CSV/JSON/JSONL with prompt,label[,category]); default: "
                                                 "the shipped training pools.")] = None,
    mode: Annotated[Optional[str], option(SelfGenConfig, "mode", "--mode")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    spec: SpecOpt = None,
    n: Annotated[Optional[int], option(SelfGenConfig, "n", "--n")] = None,
    k: Annotated[Optional[int], option(SelfGenConfig, "k", "--k")] = None,
    temperature: Annotated[Optional[float], option(SelfGenConfig, "temperature", "--temperature")] = None,
    max_new_tokens: Annotated[Optional[int], option(SelfGenConfig, "max_new_tokens", "--max-new-tokens")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many prompts per label.")
                     ] = None,
    seed: Annotated[Optional[int], option(SelfGenConfig, "seed", "--seed")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    backend: BackendOpt = "auto",
    tensor_parallel_size: TPOpt = 1,
    concurrency: ConcurrencyOpt = 8,
    timeout: TimeoutOpt = None,
    max_retries: RetriesOpt = None,
) -> None:
    """Self-generate N judged safety-reasoning chains per prompt (resumable JSONL records)."""
    from cada.models.generate import make_generator
    from cada.pipeline.pools import generation_prompts
    from cada.records import check_input, check_writable
    from cada.selfgen import self_generate, summarize
    from cada.spec.schema import load_spec

    values = {"mode": mode, "n": n, "k": k, "temperature": temperature, "max_new_tokens": max_new_tokens,
              "seed": seed}
    cfg = SelfGenConfig().with_values(values, flags={k: "--" + k.replace("_", "-") for k in values})
    http = http_settings(timeout, max_retries)
    if pool is not None:
        check_input(pool, "--pool", "pool file")
    check_writable(output, folder=False)
    s = load_spec(spec)
    prompts, removed = generation_prompts(pool, limit, cfg.seed)
    if removed:
        err.print(f"{pool}: {removed} prompts overlap an evaluation prompt (exactly, nearly or reworded) and were "
                  "left out", markup=False, highlight=False)
    gen = make_generator(model, base_url=base_url, api_key=api_key, backend=backend,
                         tensor_parallel_size=tensor_parallel_size, concurrency=concurrency, **http)
    records = self_generate(prompts, gen, s, output, cfg)
    out.print_json(data={"records": len(records), "output": str(output), **summarize(records)})


@app.command("pairs")
def pairs_cmd(
    records: Annotated[Path, typer.Option("--records", help="Records JSONL from `cada generate`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Training set JSONL.")],
    kind: Annotated[str, typer.Option("--kind", help="dpo (best vs worst sample, the staged "
                                      "arm's) | dpo-cr (the case-augmented output vs the direct refusal) | sft-dr | "
                                      "sft-sc | sft-cr.")] = "dpo",
    spec: SpecOpt = None,
    no_fallback: Annotated[bool, typer.Option("--no-fallback", help="DPO: skip prompts without a good own "
                                              "sample instead of writing a precedent-grounded chain.")] = False,
    consistency: Annotated[bool, typer.Option("--consistency/--no-consistency",
                                              help=describe(Recipe, "consistency"))] = False,
) -> None:
    """Build context-distilled DPO pairs or an SFT set from self-generated records."""
    from cada.datasets import dpo_cr_pairs, dpo_pairs, sft_set
    from cada.records import check_input, check_writable, read_records, require, write_records
    from cada.spec.schema import load_spec

    check_input(records, "--records", "records file")
    if kind not in ("dpo", "dpo-cr", "sft-dr", "sft-sc", "sft-cr"):
        raise CadaError(f"--kind {kind!r}: use dpo, dpo-cr, sft-dr, sft-sc or sft-cr")
    check_writable(output, folder=False)
    s = load_spec(spec)
    recs = read_records(records)
    if not recs:
        raise CadaError(f"{records}: no records to build {kind} rows from: give the records `cada generate` wrote")
    require(recs, "chain", records)
    if kind == "dpo":
        rows, stats = dpo_pairs(recs, s, precedent_fallback=not no_fallback, consistency=consistency)
    elif kind == "dpo-cr":
        rows, stats = dpo_cr_pairs(recs, s)
    else:
        rows, stats = sft_set(recs, s, kind.split("-")[1])
    write_records(output, rows)
    out.print_json(data={"output": str(output), **stats})


@app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="JSONL: DPO pairs, SFT messages, or GRPO prompts with a "
                                       "label column.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder; the model lands in OUTPUT/model.")],
    method: Annotated[Optional[str], option(TrainConfig, "method", "--method")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML of TrainConfig fields (its `extra` goes "
                                                   "to the TRL config as is); flags override it.")] = None,
    lr: Annotated[Optional[float], option(TrainConfig, "learning_rate", "--lr")] = None,
    epochs: Annotated[Optional[float], option(TrainConfig, "epochs", "--epochs")] = None,
    batch_size: Annotated[Optional[int], option(TrainConfig, "batch_size", "--batch-size")] = None,
    grad_accum: Annotated[Optional[int], option(TrainConfig, "grad_accum", "--grad-accum")] = None,
    beta: Annotated[Optional[float], option(TrainConfig, "beta", "--beta")] = None,
    sft_weight: Annotated[Optional[float], option(TrainConfig, "sft_weight", "--sft-weight")] = None,
    lora_r: Annotated[Optional[int], option(TrainConfig, "lora_r", "--lora-r")] = None,
    top_layers: Annotated[Optional[int], option(TrainConfig, "top_layers", "--top-layers")] = None,
    max_length: Annotated[Optional[int], option(TrainConfig, "max_length", "--max-length")] = None,
    no_merge: Annotated[bool, typer.Option("--no-merge", help="Keep only the LoRA adapter.")] = False,
    seed: Annotated[Optional[int], option(TrainConfig, "seed", "--seed")] = None,
    report_to: Annotated[Optional[str], option(TrainConfig, "report_to", "--report-to")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
) -> None:
    """Train with TRL (DPO, SFT or GRPO; LoRA by default). Works under `accelerate launch`."""
    from cada.records import check_input, check_writable
    from cada.train import load_train_config, train

    check_input(data, "--data", "training data")
    if config is not None and config.is_dir():
        check_input(config, "--config")
    check_writable(output, folder=True)
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
    arm: Annotated[Optional[str], option(AlignConfig, "arm", "--arm")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML AlignConfig (see recipes/); flags "
                                                   "below override it.")] = None,
    model: Annotated[Optional[str], option(AlignConfig, "model", "--model", "-m")] = None,
    spec: SpecOpt = None,
    pool: Annotated[Optional[Path], option(PoolConfig, "user_pool", "--pool")] = None,
    limit: Annotated[Optional[int], option(PoolConfig, "limit_per_label", "--limit", min=1)] = None,
    n: Annotated[Optional[int], option(GenConfig, "n", "--n", min=1)] = None,
    rounds: Annotated[Optional[int], option(AlignConfig, "rounds", "--rounds", min=1)] = None,
    warmup: Annotated[Optional[bool], option(AlignConfig, "warmup", "--warmup/--no-warmup")] = None,
    warmup_per_label: Annotated[Optional[int], option(AlignConfig, "warmup_per_label", "--warmup-per-label",
                                                    min=1)] = None,
    judgement: Annotated[Optional[bool], option(AlignConfig, "judgement", "--judgement/--no-judgement")] = None,
    judgement_per_label: Annotated[Optional[int], option(AlignConfig, "judgement_per_label",
                                                       "--judgement-per-label", min=1)] = None,
    calibration_per_label: Annotated[Optional[int], option(AlignConfig, "calibration_per_label",
                                                         "--calibration-per-label", min=2)] = None,
    base_url: BaseUrlOpt = None,
) -> None:
    """Run one arm end to end: pools, self-generation, judged pairs/SFT set, training."""
    from cada.pipeline.align import align
    from cada.records import check_input, check_writable

    if pool is not None:
        check_input(pool, "--pool", "pool file")
    if config is not None and config.is_dir():
        check_input(config, "--config")
    check_writable(output, folder=True)
    cfg = AlignConfig.from_yaml(config) if config else AlignConfig()
    cfg = cfg.with_values({"arm": arm, "model": model, "spec": str(spec) if spec else None, "rounds": rounds,
                           "warmup": warmup, "base_url": base_url, "warmup_per_label": warmup_per_label,
                           "judgement": judgement, "judgement_per_label": judgement_per_label,
                           "calibration_per_label": calibration_per_label,
                           "pool.user_pool": str(pool) if pool else None, "pool.limit_per_label": limit,
                           "generation.n": n})
    summary = align(cfg, output)
    out.print_json(data=summary)


