"""``cada attack pair`` and ``cada attack pap``: the paper's two searched jailbreak attacks against a target, with
an attacker and a judge LLM set apart from it; each run exports the best attack per goal as an attack file that
``cada eval --attack-file`` replays against every arm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cada.cli.app import (ApiKeyOpt, BaseUrlOpt, MARKUP, ModelOpt, RetriesOpt, SpecOpt, TimeoutOpt, app, err,
                          http_settings, out)
from cada.config import DEFAULT_MODEL
from cada.errors import CadaError

attack_app = typer.Typer(help="Searched jailbreak attacks (PAIR, PAP): an attacker LLM rewrites harmful goals, a "
                         "judge LLM rates the target's answers; the best attacks are exported for `cada eval "
                         "--attack-file`.", no_args_is_help=True, rich_markup_mode=MARKUP)
app.add_typer(attack_app, name="attack")

BenchmarkOpt = Annotated[Optional[str], typer.Option("--benchmark", "-b", help="Shipped harmful benchmark of the "
                                                     "goals (strongreject, strongreject-small, advbench, "
                                                     "xstest-unsafe).")]
DatasetOpt = Annotated[Optional[Path], typer.Option("--dataset", help="Your own CSV / JSON / JSONL of goals.")]
ColumnOpt = Annotated[str, typer.Option("--prompt-column", help="Goal column of --dataset.")]
CategoryOpt = Annotated[Optional[str], typer.Option("--category-column", help="Category column of --dataset "
                                                    "(kept in the records and the attack file).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="N goals, spread over the set's "
                                                 "categories, the same ones every run.")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Run folder (resumes when it exists).")]
ModeOpt = Annotated[str, typer.Option("--mode", help="The target's reasoning mode: none | codes | cases.")]
AttackerOpt = Annotated[Optional[str], typer.Option("--attacker-model", help="Attacker model (default: the "
                                                    "target's): embedded alias, local folder, hub id, or a "
                                                    "served name with --attacker-base-url.")]
AttackerUrlOpt = Annotated[Optional[str], typer.Option("--attacker-base-url", envvar="CADA_ATTACKER_BASE_URL",
                                                       help="OpenAI-compatible server of the attacker (key: "
                                                       "$CADA_ATTACKER_API_KEY, else $CADA_API_KEY).")]
JudgeOpt = Annotated[Optional[str], typer.Option("--judge-model", help="Judge model rating the answers 1-10 "
                                                 "(default: the attacker's).")]
JudgeUrlOpt = Annotated[Optional[str], typer.Option("--judge-base-url", envvar="CADA_JUDGE_BASE_URL",
                                                    help="OpenAI-compatible server of the judge (key: "
                                                    "$CADA_JUDGE_API_KEY, else $CADA_API_KEY).")]
TargetTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="The target's new tokens per "
                                              "answer (the paper's 150).")]
AttackerTokensOpt = Annotated[Optional[int], typer.Option("--attacker-max-new-tokens", min=1, help="The "
                                                          "attacker's new tokens per output.")]
SuccessOpt = Annotated[int, typer.Option("--success", min=1, max=10, help="The judge's rating that counts as a "
                                         "jailbreak and stops a goal.")]
SeedOpt = Annotated[int, typer.Option("--seed")]
KOpt = Annotated[int, typer.Option("--k", min=0, help="Precedents in the target's prompt (mode cases).")]


def _goals(benchmark, dataset, prompt_column, category_column, limit):
    from cada.config import EvalSet
    from cada.data.benchmarks import eval_items
    from cada.evaluate.attack import Goal
    from cada.records import check_input

    if (benchmark is None) == (dataset is None):
        raise CadaError("give exactly one of --benchmark NAME or --dataset FILE (the goals)")
    if dataset is not None:
        check_input(dataset, "--dataset", "goals file")
        # the evaluation sets' own loader: --limit spreads over the file's categories as it does for a benchmark
        items = eval_items(EvalSet(name=dataset.stem, file=str(dataset), prompt_column=prompt_column,
                                   kind="harmful", category_column=category_column, limit=limit))
    else:
        items = eval_items(EvalSet(name=benchmark, limit=limit))
        if any(it.kind != "harmful" for it in items):
            raise CadaError(f"--benchmark {benchmark!r}: not a harmful set; attack goals are harmful requests")
    if not items:
        raise CadaError("no goals to attack")
    return [Goal.from_item(it) for it in items]


def _models(model, base_url, api_key, attacker_model, attacker_base_url, judge_model, judge_base_url, http):
    """The target's, the attacker's and the judge's generators (cada.evaluate.attack.attack_models)."""
    from cada.evaluate.attack import attack_models

    return attack_models(model, base_url, api_key, attacker_model, attacker_base_url, judge_model, judge_base_url,
                         http)


def _run(kind: str, output, goals_args, model_args, target_args, settings, http) -> None:
    from cada.evaluate.attack import Target, run_search
    from cada.reasoning import Mode
    from cada.records import check_writable
    from cada.spec.schema import load_spec

    mode, k, max_new_tokens, spec, seed = target_args
    try:
        Mode(mode)
    except ValueError:
        raise CadaError(f"--mode {mode!r}: use none, codes or cases") from None
    check_writable(output, folder=True)
    goals = _goals(*goals_args)
    target_gen, attacker, judge_gen, names = _models(*model_args, http)
    target = Target(target_gen, load_spec(spec), mode=mode, k=k, max_new_tokens=max_new_tokens, seed=seed)

    def log(line: str) -> None:
        err.print(f"cada attack {kind} {line}", markup=False, highlight=False)

    summary = run_search(kind, goals, attacker, target, judge_gen, names, output, settings, log=log)
    asr = summary["asr_judge"]
    log(f"done: {summary['n']} goals, ASR {asr['value']:.2f} [{asr['ci95'][0]:.2f}, {asr['ci95'][1]:.2f}] by the "
        f"judge, {summary['asr_refusal_judge']['value']:.2f} by the refusal judge; attacks in {output / 'attacks.csv'}"
        f" (replay: cada eval --attack-file {output / 'attacks.csv'} ...)")
    import json

    out.print_json(json.dumps(summary))


@attack_app.command("pair")
def pair_cmd(
    output: OutputOpt,
    benchmark: BenchmarkOpt = None, dataset: DatasetOpt = None, prompt_column: ColumnOpt = "prompt",
    category_column: CategoryOpt = None, limit: LimitOpt = None,
    model: ModelOpt = DEFAULT_MODEL, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None,
    mode: ModeOpt = "none", k: KOpt = 6, spec: SpecOpt = None, max_new_tokens: TargetTokensOpt = 150,
    attacker_model: AttackerOpt = None, attacker_base_url: AttackerUrlOpt = None,
    judge_model: JudgeOpt = None, judge_base_url: JudgeUrlOpt = None,
    streams: Annotated[int, typer.Option("--streams", min=1, help="Parallel attacker conversations per goal "
                                         "(the paper's 20).")] = 20,
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Rounds of each conversation (the "
                                            "paper's 3).")] = 3,
    keep_last: Annotated[int, typer.Option("--keep-last", min=1, help="Exchanges kept in the attacker's "
                                           "context.")] = 4,
    attempts: Annotated[int, typer.Option("--attempts", min=1, help="Samples of the attacker per stream and "
                                          "round before an output without a usable prompt counts as an "
                                          "error.")] = 3,
    prefill: Annotated[bool, typer.Option("--prefill/--no-prefill", help="Begin the attacker's JSON reply for it "
                                          "and stop at its '}' (the reference implementation's way with open "
                                          "attackers); only where the attacker runs locally or on vLLM's engine, "
                                          "a served attacker is asked plainly.")] = True,
    attacker_max_new_tokens: AttackerTokensOpt = None, success: SuccessOpt = 10, seed: SeedOpt = 0,
    timeout: TimeoutOpt = None, max_retries: RetriesOpt = None,
) -> None:
    """PAIR: an attacker LLM iteratively rewrites each goal into a jailbreak until the judge rates the target's
    answer 10 or the budget (streams x iterations) is spent; every query is kept, the best attacks exported."""
    from cada.evaluate.pair import PairSettings

    settings = PairSettings(streams=streams, iterations=iterations, keep_last=keep_last, success=success, seed=seed,
                            attempts=attempts, prefill=prefill,
                            **({"attacker_max_new_tokens": attacker_max_new_tokens} if attacker_max_new_tokens
                               else {}))
    _run("pair", output, (benchmark, dataset, prompt_column, category_column, limit),
         (model, base_url, api_key, attacker_model, attacker_base_url, judge_model, judge_base_url),
         (mode, k, max_new_tokens, spec, seed), settings, http_settings(timeout, max_retries))


@attack_app.command("pap")
def pap_cmd(
    output: OutputOpt,
    benchmark: BenchmarkOpt = None, dataset: DatasetOpt = None, prompt_column: ColumnOpt = "prompt",
    category_column: CategoryOpt = None, limit: LimitOpt = None,
    model: ModelOpt = DEFAULT_MODEL, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None,
    mode: ModeOpt = "none", k: KOpt = 6, spec: SpecOpt = None, max_new_tokens: TargetTokensOpt = 150,
    attacker_model: AttackerOpt = None, attacker_base_url: AttackerUrlOpt = None,
    judge_model: JudgeOpt = None, judge_base_url: JudgeUrlOpt = None,
    technique: Annotated[Optional[list[str]], typer.Option("--technique", help="Persuasion technique of the PAP "
                                                           "taxonomy, repeatable (default: Misrepresentation, the "
                                                           "paper's); `cada attack techniques` lists them.")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Paraphrases tried per goal and technique, "
                                         "until one succeeds.")] = 3,
    attacker_max_new_tokens: AttackerTokensOpt = None, success: SuccessOpt = 10, seed: SeedOpt = 0,
    timeout: TimeoutOpt = None, max_retries: RetriesOpt = None,
) -> None:
    """PAP: an attacker LLM paraphrases each goal persuasively with a technique of the persuasion taxonomy; the
    target answers and the judge rates it; every paraphrase is kept, the best per goal exported."""
    from cada.evaluate.pap import DEFAULT_TECHNIQUES, PapSettings, technique as known

    settings = PapSettings(techniques=[known(t) for t in technique or DEFAULT_TECHNIQUES], samples=samples,
                           success=success, seed=seed,
                           **({"attacker_max_new_tokens": attacker_max_new_tokens} if attacker_max_new_tokens
                              else {}))
    _run("pap", output, (benchmark, dataset, prompt_column, category_column, limit),
         (model, base_url, api_key, attacker_model, attacker_base_url, judge_model, judge_base_url),
         (mode, k, max_new_tokens, spec, seed), settings, http_settings(timeout, max_retries))


@attack_app.command("techniques")
def techniques_cmd() -> None:
    """The persuasion techniques PAP can use (the taxonomy of Zeng et al. 2024), with their definitions."""
    from rich.table import Table

    from cada.evaluate.pap import taxonomy

    t = Table(title="PAP persuasion taxonomy (CHATS-lab/persuasive_jailbreaker, Apache-2.0)")
    t.add_column("technique")
    t.add_column("definition")
    for name, row in taxonomy().items():
        t.add_row(name, row["definition"])
    out.print(t)

