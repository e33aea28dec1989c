"""lm-evaluation-harness passthrough (``cada eval --lm-eval TASK``): a model scored by the field's own harness.

cada's BBH and MMLU *subsets* (``cada eval --benchmark bbh|mmlu``) are small, reproducible and offline, made for the
CPU; a paper compares against lm-evaluation-harness's numbers on the full sets. This module hands a model (an
alias, a local folder, a LoRA adapter folder or a hub id) to ``lm_eval.simple_evaluate`` unchanged, one task at a
time, and keeps what it returns: lm-eval's own results per task, its per-sample log, and a cada-shaped
``metrics.json`` (value with a 95% interval, n) that the rest of cada reads. lm-eval is an optional extra
(``pip install 'cada[lm-eval]'``), and it downloads its task datasets from the hub the first time a task runs:
that is what the user asked for by naming a task.

Resumable per task: a finished task's file is read back, never rerun; a folder made with other settings (model,
backend, limit, chat template, seed, lm-eval version) is refused before anything loads.
"""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path

from cada.errors import CadaError
from cada.records import read_json, write_json

log = logging.getLogger(__name__)

# the paper's Table 4 (arXiv 2601.08000v1): GSM8K 0-shot exact match, BBH 0-shot exact match, MMLU 5-shot
PAPER_TASKS = {"gsm8k": 0, "bbh_zeroshot": 0, "mmlu": 5}
PIN_FILE = "lm_eval.json"
# the metric a task's headline value is read from, first present wins: lm-eval names a metric "<metric>,<filter>"
PRIMARY = ("acc,none", "exact_match,strict-match", "exact_match,flexible-extract", "exact_match,get-answer",
           "exact_match,none", "acc_norm,none")


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise CadaError("--lm-eval needs lm-evaluation-harness, an optional extra: pip install 'cada[lm-eval]'"
                        ) from None
    return lm_eval


def parse_tasks(values: list[str]) -> dict[str, int | None]:
    """``NAME[:SHOTS]`` per value (``paper`` = the paper's three with their shots); None keeps the task's default."""
    tasks: dict[str, int | None] = {}
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if part == "paper":
                tasks.update(PAPER_TASKS)
                continue
            name, _, shots = part.partition(":")
            if shots and not (shots.isdigit()):
                raise CadaError(f"--lm-eval {part!r}: give TASK or TASK:SHOTS with SHOTS a whole number, e.g. mmlu:5")
            tasks[name] = int(shots) if shots else None
    if not tasks:
        raise CadaError("--lm-eval: name at least one lm-eval task (e.g. gsm8k:0, or paper)")
    return tasks


def model_args(source: str, *, backend: str, tensor_parallel_size: int = 1) -> tuple[str, dict]:
    """lm-eval's model type and arguments for a resolved model ``source``: a LoRA adapter folder goes in as
    ``peft`` over the base model its adapter_config names (lm-eval's hf model loads both)."""
    args: dict = {"trust_remote_code": False}
    folder = Path(source)
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        if backend == "vllm":
            raise CadaError(f"{source}: a LoRA adapter folder; --backend vllm takes a merged model (merge the "
                            "adapter with peft's merge_and_unload, or use --backend hf)")
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise CadaError(f"{folder / 'adapter_config.json'}: no base_model_name_or_path to load the adapter onto")
        args.update(pretrained=base, peft=str(folder))
    else:
        args["pretrained"] = source
    if backend == "vllm":
        args["tensor_parallel_size"] = tensor_parallel_size
        return "vllm", args
    return "hf", args


def _headline(results: dict) -> tuple[str | None, float | None, float | None]:
    keys = [k for k in PRIMARY if isinstance(results.get(k), (int, float))]
    keys += [k for k, v in results.items() if isinstance(v, (int, float)) and "," in k and "_stderr" not in k]
    if not keys:
        return None, None, None
    key = keys[0]
    name, _, filt = key.partition(",")
    se = results.get(f"{name}_stderr,{filt}")
    return key, float(results[key]), float(se) if isinstance(se, (int, float)) else None


def task_metrics(task: str, result: dict) -> dict:
    """cada's shape of one task's lm-eval result: its headline metric as ``accuracy`` with a normal 95% interval
    from lm-eval's own standard error (cada's bootstrap needs per-item scores lm-eval aggregates away), n the
    number of documents scored (summed over a group's subtasks)."""
    res = result["results"].get(task, {})
    key, value, se = _headline(res)
    subtasks = [t for t in result.get("n-samples", {}) if t != task] or [task]
    n = sum(int(result.get("n-samples", {}).get(t, {}).get("effective", 0)) for t in subtasks)
    acc = None
    if value is not None:
        lo, hi = (value, value) if se is None else (max(0.0, value - 1.96 * se), min(1.0, value + 1.96 * se))
        acc = {"value": round(value, 4), "ci95": [round(lo, 4), round(hi, 4)]}
    return {"n": n, "accuracy": acc, "metric": key, "harness": "lm-eval",
            "lm_eval_version": result.get("lm_eval_version"), "num_fewshot": (result.get("n-shot") or {}).get(task), "interval": "normal, from lm-eval's stderr"}


def _default_batch(kind: str, device: str | None) -> int | str:
    # lm-eval's "auto" probes the largest batch that fits a GPU; on a CPU it would probe with 64 long sequences
    return "auto" if kind == "vllm" or (device or "").startswith("cuda") else 8


def _task_file(output: Path, task: str, shots: int | None) -> Path:
    return output / "tasks" / f"{task}-{'default' if shots is None else f'{shots}shot'}.json"


def run_lm_eval(model: str, tasks: dict[str, int | None], output: str | Path, *, backend: str = "hf",
                limit: int | None = None, batch_size: int | None = None, device: str | None = None,
                include_path: str | Path | None = None, chat_template: bool = False, seed: int = 0,
                tensor_parallel_size: int = 1) -> dict:
    """Score ``model`` on each lm-eval task of ``tasks`` (name → shots, None = the task's default) into
    ``output``: ``tasks/<task>-<shots>.json`` (lm-eval's results), ``samples/<task>.jsonl`` (its per-document
    log) and ``metrics.json`` (one entry per task, as :func:`task_metrics`). Returns the metrics."""
    from cada.models.load import resolve_model

    if backend not in ("hf", "vllm"):
        raise CadaError(f"--backend {backend!r}: the lm-eval passthrough runs hf or vllm")
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    output = Path(output)
    if include_path is not None and not Path(include_path).is_dir():
        raise CadaError(f"--lm-eval-include {include_path}: not a folder of lm-eval task YAML files")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3)
            raise CadaError(f"--lm-eval {task!r}: not an lm-eval task"
                            + (f" (did you mean {', '.join(close)}?)" if close else "")
                            + "; `lm-eval ls tasks` lists them")
    source = resolve_model(model, check_hub=True)
    kind, args = model_args(source, backend=backend, tensor_parallel_size=tensor_parallel_size)
    pin = {"harness": "lm-eval", "lm_eval_version": lm_eval.__version__, "model": str(model), "backend": kind,
           "limit": limit, "chat_template": chat_template, "seed": seed,
           "include_path": str(include_path) if include_path else None}
    old = read_json(output / PIN_FILE) if (output / PIN_FILE).is_file() else None
    if old is not None:
        changed = [k for k in pin if old.get(k) != pin[k]]
        if changed:
            diff = ", ".join(f"{k} {old.get(k)!r}, now {pin[k]!r}" for k in changed)
            raise CadaError(f"--output {output}: made with other settings ({diff}); give a new folder or the same "
                            "settings")
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / PIN_FILE, pin)

    metrics = read_json(output / "metrics.json") if (output / "metrics.json").is_file() else {}
    for task, shots in tasks.items():
        path = _task_file(output, task, shots)
        if path.is_file():
            result = read_json(path)
        else:
            log.info("lm-eval %s (%s shots) on %s", task, "default" if shots is None else shots, model)
            result = lm_eval.simple_evaluate(
                model=kind, model_args=args, tasks=[task], num_fewshot=shots, limit=limit,
                batch_size=batch_size or _default_batch(kind, device), device=device, task_manager=manager,
                log_samples=True, apply_chat_template=chat_template, random_seed=seed, numpy_random_seed=seed,
                torch_random_seed=seed, fewshot_random_seed=seed)
            if result is None:  # lm-eval returns None on the ranks other than 0 of a distributed run
                continue
            samples = result.pop("samples", {}) or {}
            (output / "samples").mkdir(exist_ok=True)
            with open(output / "samples" / f"{path.stem}.jsonl", "w", encoding="utf-8") as f:
                for sub, rows in samples.items():
                    for row in rows:
                        f.write(json.dumps({"task": sub, **row}, default=handle_non_serializable) + "\n")
            # written last: its presence marks the task done (a kill before it reruns the task)
            write_json(path, json.loads(json.dumps(result, default=handle_non_serializable)))
        metrics[task] = task_metrics(task, result)
        write_json(output / "metrics.json", metrics)
    return metrics
