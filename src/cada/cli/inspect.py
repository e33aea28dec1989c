"""``cada spec``, ``cada model prepare`` and ``cada reason``: the spec, the model, one request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cada.cli.app import (ApiKeyOpt, BaseUrlOpt, ModelOpt, RetriesOpt, SpecOpt, TimeoutOpt, app, err, http_settings,
                          model_app, option, out, spec_app)
from cada.config import (GenConfig)
from cada.errors import CadaError


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
    for warning in spec.long_texts():
        err.print(f"{path}: warning: {warning}", markup=False, highlight=False)
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
    max_new_tokens: Annotated[int, option(GenConfig, "max_new_tokens", "--max-new-tokens", min=1)
                              ] = GenConfig().max_new_tokens,
    temperature: Annotated[float, option(GenConfig, "temperature", "--temperature")] = 0.0,
    top_p: Annotated[float, option(GenConfig, "top_p", "--top-p")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = None,
    max_retries: RetriesOpt = None,
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
    http = http_settings(timeout, max_retries)
    s = load_spec(spec)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    gen = make_generator(model, base_url=base_url, api_key=api_key, device=device,
                         trust_remote_code=trust_remote_code, show_progress=False, **http)
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


