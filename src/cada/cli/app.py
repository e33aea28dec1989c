"""The ``cada`` app and what its commands share: the typer apps, the consoles, the common options, and
:func:`option`, which takes a flag's help from the config field it sets."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cada import __version__
from cada.config import HttpConfig, describe

# rich help panels only on a terminal of 100+ columns: on a narrow one, and when piped (rich then draws 80
# columns), they would cut long option names such as --calibration-per-label; click's plain help wraps instead
MARKUP = "rich" if shutil.get_terminal_size((80, 24)).columns >= 100 else None
VLLM_EXTRA = "\\[vllm]" if MARKUP else "[vllm]"  # rich would read [vllm] as markup and drop it
app = typer.Typer(help="Case-Augmented Deliberative Alignment: safer LLMs from statutes and precedents.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=MARKUP)
spec_app = typer.Typer(help="Inspect and validate safety specs (statutes, codes, precedents).",
                       no_args_is_help=True, rich_markup_mode=MARKUP)
model_app = typer.Typer(help="Prepare models (the embedded one is converted once, then cached).",
                        no_args_is_help=True, rich_markup_mode=MARKUP)
judge_app = typer.Typer(help="Judge final responses: the offline refusal judge or the StrongREJECT rubric "
                        "judge over an OpenAI-compatible server; train and calibrate the refusal judge.",
                        invoke_without_command=True, no_args_is_help=True, rich_markup_mode=MARKUP)
app.add_typer(spec_app, name="spec")
app.add_typer(model_app, name="model")
app.add_typer(judge_app, name="judge")

out = Console() if sys.stdout.isatty() else Console(width=160)  # piped output: tables without wrapping
err = Console(stderr=True, soft_wrap=True)  # errors and warnings stay one line each, whatever the width

# shared options ---------------------------------------------------------------------------------
def option(cls, name: str, *flags: str, **kw):
    """A flag for the config field ``cls.name``: its help is the field's description and its range the field's
    bounds (each declared once, in cada.config), so a nonsense number is refused by the option itself; its default
    is None, so it overrides a config file only when given."""
    import annotated_types as at

    # closed bounds only: click's ranges have no open end, so a strict bound (lr > 0) is the config's one-line error
    for m in cls.model_fields[name].metadata:
        if isinstance(m, at.Ge):
            kw.setdefault("min", m.ge)
        elif isinstance(m, at.Le):
            kw.setdefault("max", m.le)
    kw.setdefault("callback", finite)
    return typer.Option(*flags, help=describe(cls, name), **kw)


def finite(value):
    """Refuse inf and NaN for a float flag, as click refuses a value out of its range (NaN passes every range)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


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
                                         f"'.{VLLM_EXTRA}' in the cada checkout).")]
TPOpt = Annotated[int, typer.Option("--tensor-parallel-size", min=1, help="GPUs for --backend vllm.")]
JudgeUrlOpt = Annotated[Optional[str], typer.Option("--judge-base-url", "--base-url", envvar="CADA_JUDGE_BASE_URL",
                                                    help="OpenAI-compatible server of the rubric judge.")]
JudgeModelOpt = Annotated[Optional[str], typer.Option("--judge-model", "--model", "-m",
                                                      help="Rubric judge model name on that server.")]
JudgeKeyOpt = Annotated[Optional[str], typer.Option("--judge-api-key", "--api-key", envvar="CADA_JUDGE_API_KEY",
                                                    show_default=False, help="API key of the judge server (better: "
                                                    "set CADA_JUDGE_API_KEY; else CADA_API_KEY is used).")]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight over HTTP.")]
TimeoutOpt = Annotated[Optional[float], option(HttpConfig, "timeout", "--timeout")]
RetriesOpt = Annotated[Optional[int], option(HttpConfig, "max_retries", "--max-retries")]


def http_settings(timeout: float | None, max_retries: int | None) -> dict:
    """``--timeout`` / ``--max-retries`` checked (a bad value names the flag), as make_generator's keywords."""
    cfg = HttpConfig().with_values({"timeout": timeout, "max_retries": max_retries},
                                   flags={"timeout": "--timeout", "max_retries": "--max-retries"})
    return {"timeout": cfg.timeout, "max_retries": cfg.max_retries}


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


