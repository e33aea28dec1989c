"""The ``cada`` command: a thin typer app; every command calls one library function."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cada import __version__
from cada.errors import CadaError

app = typer.Typer(help="Case-Augmented Deliberative Alignment: safer LLMs from statutes and precedents.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
spec_app = typer.Typer(help="Inspect and validate safety specs (statutes, codes, precedents).",
                       no_args_is_help=True)
model_app = typer.Typer(help="Prepare and inspect models.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(model_app, name="model")

out = Console()
err = Console(stderr=True)

# shared options ---------------------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Embedded alias (smollm2-135m), local HF folder, "
                                       "or hub id (downloads only then).")]
SpecOpt = Annotated[Optional[Path], typer.Option("--spec", help="Spec folder or YAML file (default: the shipped "
                                                 "spec).")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", envvar="CADA_BASE_URL",
                                                   help="OpenAI-compatible server (e.g. vLLM); generation goes "
                                                   "there instead of a local model.")]
ApiKeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar="CADA_API_KEY", show_default=False,
                                                  help="API key for --base-url (better: set CADA_API_KEY).")]


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


# spec -------------------------------------------------------------------------------------------
@spec_app.command("validate")
def spec_validate(path: Annotated[Path, typer.Argument(help="Spec folder or YAML file.")]) -> None:
    """Check a spec; print PATH:LINE: problem lines and exit non-zero when it is invalid."""
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
            out.print(f"[cyan]{c.id}[/] [{c.category}] [bold]{c.verdict.value}[/]: {c.request}", highlight=False)


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
    k: Annotated[int, typer.Option("--k", help="Precedents in the prompt for --mode cases: the k most similar "
                                   "by embedding; 0 = all.")] = 6,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
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
