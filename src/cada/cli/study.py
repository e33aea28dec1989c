"""``cada eval``, ``cada study``, ``cada demo`` and ``cada report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cada.cli.app import (ApiKeyOpt, BackendOpt, BaseUrlOpt, ConcurrencyOpt, ModelOpt, SpecOpt, TPOpt, app, option, out)
from cada.config import (DEFAULT_MODEL, EvalConfig, EvalSet)
from cada.errors import CadaError


# evaluation, study, demo -------------------------------------------------------------------------
def _rate(m: dict, key: str) -> str:
    r = m.get(key)
    if not isinstance(r, dict) or r.get("value") is None:
        return "-"
    if not r.get("ci95"):
        return f"{r['value']:.2f}"
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
    dataset: Annotated[Optional[Path], option(EvalSet, "file", "--dataset")] = None,
    prompt_column: Annotated[str, option(EvalSet, "prompt_column", "--prompt-column")] = "prompt",
    kind: Annotated[Optional[str], option(EvalSet, "kind", "--kind")] = None,
    spec: SpecOpt = None,
    reference_column: Annotated[Optional[str], option(EvalSet, "reference_column", "--reference-column")] = None,
    category_column: Annotated[Optional[str], option(EvalSet, "category_column", "--category-column")] = None,
    benchmark: Annotated[Optional[str], option(EvalSet, "benchmark", "--benchmark", "-b")] = None,
    suite: Annotated[Optional[str], typer.Option("--suite", help="Named suite: default | demo | full (one "
                                                 "subfolder per set).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="none | codes | cases.")] = "none",
    attack: Annotated[Optional[list[str]], option(EvalSet, "attacks", "--attack")] = None,
    attack_file: Annotated[Optional[Path], option(EvalSet, "attack_file", "--attack-file")] = None,
    attack_column: Annotated[str, option(EvalSet, "attack_column", "--attack-column")] = "prompt",
    templates: Annotated[Optional[int], option(EvalSet, "templates", "--templates", min=1)] = None,
    limit: Annotated[Optional[int], option(EvalSet, "limit", "--limit", min=1)] = None,
    max_new_tokens: Annotated[Optional[int], option(EvalConfig, "max_new_tokens", "--max-new-tokens", min=1)] = None,
    k: Annotated[Optional[int], option(EvalConfig, "k", "--k", min=0)] = None,
    judge: Annotated[Optional[str], option(EvalConfig, "judge", "--judge")] = None,
    judge_base_url: Annotated[Optional[str], option(EvalConfig, "judge_base_url", "--judge-base-url",
                                                  envvar="CADA_JUDGE_BASE_URL")] = None,
    judge_model: Annotated[Optional[str], option(EvalConfig, "judge_model", "--judge-model")] = None,
    judge_api_key: Annotated[Optional[str], typer.Option("--judge-api-key", envvar="CADA_JUDGE_API_KEY",
                                                         show_default=False, help="API key of the judge server "
                                                         "(better: set CADA_JUDGE_API_KEY; else CADA_API_KEY).")
                             ] = None,
    batch_size: Annotated[Optional[int], option(EvalConfig, "batch_size", "--batch-size", min=1)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    backend: BackendOpt = "auto",
    tensor_parallel_size: TPOpt = 1,
    concurrency: ConcurrencyOpt = 8,
    timeout: Annotated[Optional[float], option(EvalConfig, "timeout", "--timeout")] = None,
    max_retries: Annotated[Optional[int], option(EvalConfig, "max_retries", "--max-retries")] = None,
    lm_eval: Annotated[Optional[list[str]], typer.Option(
        "--lm-eval", help="Score the model with lm-evaluation-harness instead: its task NAME[:SHOTS] (repeat or "
        "comma-separate), or paper = gsm8k:0, bbh_zeroshot:0, mmlu:5. Needs pip install 'cada[lm-eval]'; lm-eval "
        "downloads each task's data from the hub.")] = None,
    lm_eval_include: Annotated[Optional[Path], typer.Option(
        "--lm-eval-include", help="Folder of your own lm-eval task YAML files (with --lm-eval).")] = None,
    chat_template: Annotated[bool, typer.Option(
        "--chat-template", help="With --lm-eval: wrap each prompt in the model's chat template (lm-eval's "
        "--apply_chat_template; off by default, as in lm-eval).")] = False,
) -> None:
    """Evaluate a model on a benchmark, your own file, or a named suite; rates with 95% bootstrap intervals.
    With --lm-eval, lm-evaluation-harness scores it on its own tasks instead."""
    if lm_eval is not None:
        if any(x is not None for x in (dataset, benchmark, suite)):
            raise CadaError("--lm-eval scores lm-eval's own tasks: give it without --dataset, --benchmark or --suite")
        import os

        # a value from the environment ($CADA_BASE_URL, ...) is the user's setting for other commands: not an error
        env = {"--base-url": "CADA_BASE_URL", "--api-key": "CADA_API_KEY", "--judge-base-url": "CADA_JUDGE_BASE_URL"}
        given = [flag for flag, v in (("--base-url", base_url), ("--api-key", api_key),
                                      ("--judge-base-url", judge_base_url))
                 if v is not None and v != os.environ.get(env[flag])]
        given += [flag for flag, v in (
            ("--attack", attack), ("--attack-file", attack_file), ("--judge", judge), ("--spec", spec), ("--k", k),
            ("--max-new-tokens", max_new_tokens), ("--judge-model", judge_model), ("--templates", templates),
            ("--kind", kind), ("--reference-column", reference_column), ("--category-column", category_column),
            ("--timeout", timeout), ("--max-retries", max_retries)) if v is not None]
        given += [flag for flag, v, default in (("--mode", mode, "none"), ("--prompt-column", prompt_column, "prompt"),
                                                ("--attack-column", attack_column, "prompt"),
                                                ("--concurrency", concurrency, 8)) if v != default]
        if backend != "vllm" and tensor_parallel_size != 1:
            given.append("--tensor-parallel-size (vllm only)")
        if given:
            raise CadaError(f"--lm-eval runs lm-eval's tasks as lm-eval defines them: {', '.join(given)} does not "
                            "apply to them (the model goes in as a folder, alias or hub id)")
        if backend not in ("auto", "local", "vllm"):
            raise CadaError(f"--backend {backend!r} with --lm-eval: use local (transformers) or vllm")
        _lm_eval_cmd(model, lm_eval, output, backend="vllm" if backend == "vllm" else "hf", limit=limit,
                     batch_size=batch_size, include_path=lm_eval_include, chat_template=chat_template, seed=seed,
                     tensor_parallel_size=tensor_parallel_size)
        return
    if lm_eval_include is not None or chat_template:
        raise CadaError("--lm-eval-include and --chat-template go with --lm-eval")
    from cada.evaluate.harness import PIN_FILE as LM_EVAL_PIN

    if (output / LM_EVAL_PIN).is_file():
        raise CadaError(f"--output {output}: holds lm-eval's scores ({LM_EVAL_PIN}); give this evaluation a new "
                        "folder")
    from cada.config import suite as named_suite
    from cada.evaluate.run import PIN_FILE, check_folders, evaluate_model, load_sets, make_judges
    from cada.models.generate import make_generator
    from cada.reasoning import Mode
    from cada.records import check_input, check_writable, write_json
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
        check_input(dataset, "--dataset", "dataset file")
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
                        reference_column=reference_column, category_column=category_column).with_values(attacks)]
    else:
        sets = [EvalSet(name=benchmark).with_values(attacks)]
    if attack_file is not None:
        check_input(attack_file, "--attack-file", "attack file")
    values = {"max_new_tokens": max_new_tokens, "k": k, "judge": judge, "judge_base_url": judge_base_url,
              "judge_model": judge_model, "batch_size": batch_size, "timeout": timeout, "max_retries": max_retries}
    cfg = EvalConfig().with_values(values, flags={key: "--" + key.replace("_", "-") for key in values})
    # checked before any work: a path that is a file, or cannot be written, fails now rather than after generating
    check_writable(output, folder=True)
    # the judge's own key: the policy server's --api-key is never sent to another server
    judges = make_judges(cfg, api_key=judge_api_key)
    loaded = load_sets(sets)

    def folder_of(es):
        return output if suite is None else output / es.name

    # a suite's metrics.json (one entry per set) and a single set's share the top-level name: never mix the two
    if suite is not None and (output / "records.jsonl").is_file():
        raise CadaError(f"--output {output}: holds a single-set evaluation (records.jsonl); give the suite a new "
                        "folder")
    if suite is None and output.is_dir() and any((d / PIN_FILE).is_file() for d in output.iterdir() if d.is_dir()):
        raise CadaError(f"--output {output}: holds a suite's evaluation (one folder per set); give this set a new "
                        "folder")

    # a folder made with other settings (mode, set, model, ...) is refused before the model loads
    check_folders(loaded, folder_of, cfg, model=model, mode=mode, judges=judges, seed=seed)
    s = load_spec(spec)
    gen = make_generator(model, base_url=base_url, api_key=api_key, batch_size=cfg.batch_size, backend=backend,
                         tensor_parallel_size=tensor_parallel_size, concurrency=concurrency, timeout=cfg.timeout,
                         max_retries=cfg.max_retries)
    results = evaluate_model(gen, loaded, s, folder_of, cfg, mode=mode, judges=judges, seed=seed)
    if suite is not None:
        write_json(output / "metrics.json", results)
    out.print(_metrics_table(results, f"{model} ({mode})"))
    for name, m in results.items():
        if "by_attack" in m:
            out.print(_metrics_table(m["by_attack"], f"{name}: by attack"))
    out.print(f"wrote {output}", markup=False, highlight=False)
    # as `cada judge`: a rubric judge that scored nothing is an error (the records are kept, rubric_score null)
    dead = [es for es in sets if (m := results.get(es.name, {})).get("n") and m.get("rubric_failed") == m["n"]]
    if dead:
        from cada.records import read_records

        first = next((r["rubric"].get("error") for r in read_records(folder_of(dead[0]) / "records.jsonl")
                      if (r.get("rubric") or {}).get("error")), None)
        raise CadaError(f"--judge rubric failed on every row of {', '.join(es.name for es in dead)} (first: "
                        f"{' '.join(str(first).split())[:200]}; rubric_score null in {output}); check "
                        "--judge-base-url, --judge-model and the server, then evaluate into a new folder")


def _lm_eval_cmd(model: str, tasks: list[str], output: Path, **kw) -> None:
    from cada.evaluate.harness import parse_tasks, run_lm_eval
    from cada.evaluate.run import PIN_FILE
    from cada.models.load import pick_device
    from cada.records import check_writable

    check_writable(output, folder=True)
    if (output / "records.jsonl").is_file() or (output / PIN_FILE).is_file():
        raise CadaError(f"--output {output}: holds a cada evaluation; give lm-eval's scores a new folder")
    device = pick_device() if kw["backend"] == "hf" else None
    results = run_lm_eval(model, parse_tasks(tasks), output, device=device, **kw)
    t = Table(title=f"{model}: lm-evaluation-harness {next(iter(results.values()), {}).get('lm_eval_version', '')}")
    for c in ("task", "shots", "n", "metric", "value [95% CI]"):
        t.add_column(c)
    for name, m in results.items():
        t.add_row(name, str(m.get("num_fewshot")), str(m.get("n")), str(m.get("metric")), _rate(m, "accuracy"))
    out.print(t)
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
    from cada.records import check_writable

    cfg = load_study(config)
    output = output or Path("runs") / cfg.name
    check_writable(output, folder=True)
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
    from cada.records import check_writable

    check_writable(output, folder=True)
    _print_summary(run_study(demo_config(model), output), output)


@app.command("report")
def report_cmd(study: Annotated[Path, typer.Argument(help="Study folder (holds summary.json).")]) -> None:
    """(Re)write a study's report: HTML (self-contained), markdown and JSON."""
    from cada.report import write_report

    for kind, path in write_report(study).items():
        out.print(f"{kind}: {path}", markup=False, highlight=False)


