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
import importlib.util
import json
import logging
from pathlib import Path

from cada.errors import CadaError
from cada.evaluate.metrics import _number  # a finite int/float (not bool) as float, else None
from cada.records import read_json, write_json

log = logging.getLogger(__name__)

# the paper's Table 4 (arXiv 2601.08000v1): GSM8K 0-shot exact match, BBH 0-shot exact match, MMLU 5-shot
PAPER_TASKS = {"gsm8k": 0, "bbh_zeroshot": 0, "mmlu": 5}
PIN_FILE = "lm_eval.json"
# the metric a task's headline value is read from, first present wins (lm-eval names a result "<metric>,<filter>").
# flexible-extract before strict-match: at 0 shots (the paper's GSM8K and BBH) strict-match wants the few-shot
# answer format ("#### N") the prompt never showed, and bbh_zeroshot's group aggregates flexible-extract only
PRIMARY = ("acc,none", "exact_match,flexible-extract", "exact_match,strict-match", "exact_match,get-answer",
           "exact_match,none", "acc_norm,none")
BOUNDED = ("acc", "acc_norm", "exact_match", "mc1", "mc2", "f1", "em")  # proportions in [0, 1], higher is better


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
    ``peft`` over the base model its adapter_config names (lm-eval's hf model loads both), with the adapter
    folder's own tokenizer where it has one (cada saves it there)."""
    from cada.models.load import resolve_model

    args: dict = {"trust_remote_code": False}
    folder = Path(source)
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        if backend == "vllm":
            raise CadaError(f"{source}: a LoRA adapter folder; --backend vllm takes a merged model (merge the "
                            "adapter with peft's merge_and_unload, or use --backend hf)")
        config = folder / "adapter_config.json"
        base = json.loads(config.read_text()).get("base_model_name_or_path")
        if not base:
            raise CadaError(f"{config}: no base_model_name_or_path to load the adapter onto")
        try:
            base = resolve_model(base, check_hub=True)
        except CadaError as e:
            raise CadaError(f"{config}: base_model_name_or_path {base!r}: {e}") from None
        args.update(pretrained=base, peft=str(folder))
        if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            args["tokenizer"] = str(folder)
    else:
        args["pretrained"] = source
    if backend == "vllm":
        args["tensor_parallel_size"] = tensor_parallel_size
        return "vllm", args
    return "hf", args


def _headline(results: dict) -> tuple[str | None, float | None, float | None]:
    keys = [k for k in PRIMARY if _number(results.get(k)) is not None]
    keys += [k for k, v in results.items() if _number(v) is not None and "," in k and "_stderr" not in k]
    if not keys:
        return None, None, None
    key = keys[0]
    name, _, filt = key.partition(",")
    return key, _number(results[key]), _number(results.get(f"{name}_stderr,{filt}"))


def _shots(task: str, result: dict) -> int | None:
    """The task's shots as lm-eval ran it: its own ``n-shot`` entry, else the one count its leaf tasks share (a
    nested group such as mmlu gets no entry of its own)."""
    n_shot = result.get("n-shot") or {}
    if isinstance(n_shot.get(task), int):
        return n_shot[task]
    leaves = {n_shot.get(t) for t in result.get("n-samples", {})}
    return leaves.pop() if len(leaves) == 1 and isinstance(next(iter(leaves), None), int) else None


def task_metrics(task: str, result: dict) -> dict:
    """cada's shape of one task's lm-eval result: its headline metric (:data:`PRIMARY`) as ``accuracy`` with a
    normal 95% interval from lm-eval's own standard error (cada's bootstrap needs per-item scores lm-eval
    aggregates away; null where lm-eval gives no standard error), n the documents scored (summed over a group's
    leaf tasks), every ``metric,filter`` value under ``all``. A metric that is not a proportion (perplexity,
    BLEU) is kept under ``all`` only."""
    res = result["results"].get(task, {})
    key, value, se = _headline(res)
    subtasks = [t for t in result.get("n-samples", {}) if t != task] or [task]
    n = sum(int(result.get("n-samples", {}).get(t, {}).get("effective", 0)) for t in subtasks)
    acc = None
    if value is not None and key.split(",")[0] in BOUNDED:
        ci = None if se is None else [round(max(0.0, value - 1.96 * se), 4), round(min(1.0, value + 1.96 * se), 4)]
        acc = {"value": round(value, 4), "ci95": ci}
    return {"n": n, "accuracy": acc, "metric": key, "harness": "lm-eval",
            "lm_eval_version": result.get("lm_eval_version"), "num_fewshot": _shots(task, result),
            "interval": "normal, from lm-eval's stderr",
            "all": {k: v for k, v in res.items() if _number(v) is not None or v == "N/A"}}


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
    ``output``: ``tasks/<task>-<shots>shot.json`` (lm-eval's results), ``samples/<task>-<shots>shot.jsonl`` (its
    per-document log) and ``metrics.json`` (one entry per task asked for this time, as :func:`task_metrics`).
    Returns the metrics. The model is loaded once, and only if a task is left to score."""
    from cada.models.load import resolve_model

    if backend not in ("hf", "vllm"):
        raise CadaError(f"--backend {backend!r}: the lm-eval passthrough runs hf or vllm")
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    output = Path(output)
    if include_path is not None and not Path(include_path).is_dir():
        raise CadaError(f"--lm-eval-include {include_path}: not a folder of lm-eval task YAML files")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise CadaError("--backend vllm: vllm is not installed (pip install 'cada[vllm]' on a GPU machine)")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    runnable = set(manager.all_groups) | set(manager.all_subtasks)
    for task in tasks:
        if task in runnable:
            continue
        if task in set(manager.all_tags):
            raise CadaError(f"--lm-eval {task!r}: an lm-eval tag (a list of tasks, no score of its own); name the "
                            "tasks, or a group that aggregates them")
        close = difflib.get_close_matches(task, sorted(runnable), n=3)
        raise CadaError(f"--lm-eval {task!r}: not an lm-eval task" + (f" (did you mean {', '.join(close)}?)" if close
                        else "") + "; `lm-eval ls tasks` lists them")
    source = resolve_model(model, check_hub=True)
    kind, args = model_args(source, backend=backend, tensor_parallel_size=tensor_parallel_size)
    pin = {"harness": "lm-eval", "lm_eval_version": lm_eval.__version__, "model": source, "backend": kind,
           "limit": limit, "chat_template": chat_template, "seed": seed,
           "include_path": str(Path(include_path).resolve()) if include_path else None}
    old = read_json(output / PIN_FILE) if (output / PIN_FILE).is_file() else None
    finished = (output / "tasks").is_dir() and any((output / "tasks").glob("*.json"))
    if old is not None and finished:  # a pin with nothing finished under it locks nothing
        changed = [k for k in pin if old.get(k) != pin[k]]
        if changed:
            diff = ", ".join(f"{k} {old.get(k)!r}, now {pin[k]!r}" for k in changed)
            raise CadaError(f"--output {output}: made with other settings ({diff}); give a new folder or the same "
                            "settings")
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / PIN_FILE, pin)

    lm = None  # loaded once, when the first unfinished task needs it (a second vLLM engine would not fit the GPU)
    metrics = {}
    for task, shots in tasks.items():
        path = _task_file(output, task, shots)
        if not path.is_file():
            if lm is None:
                log.info("loading %s for lm-eval (%s)", model, kind)
                try:
                    lm = lm_eval.api.registry.get_model(kind).create_from_arg_obj(
                        args, {"batch_size": batch_size or _default_batch(kind, device), "device": device})
                except Exception as e:  # noqa: BLE001 - lm-eval's and transformers' errors, as one line
                    log.debug("lm-eval could not load the model", exc_info=True)
                    raise CadaError(f"--lm-eval: lm-eval could not load {model} ({kind}): {_first_line(e)}") from None
            log.info("lm-eval %s (%s shots) on %s", task, "default" if shots is None else shots, model)
            try:
                result = lm_eval.simple_evaluate(
                    model=lm, tasks=[task], num_fewshot=shots, limit=limit, task_manager=manager, log_samples=True,
                    apply_chat_template=chat_template, fewshot_as_multiturn=chat_template, random_seed=seed)
            except Exception as e:  # noqa: BLE001 - a dataset download, an unsafe-code task, ...: one line
                log.debug("lm-eval failed", exc_info=True)
                raise CadaError(f"--lm-eval {task}: lm-eval failed: {_first_line(e)} (finished tasks are kept in "
                                f"{output / 'tasks'}; task data comes from the hub: check the network, or "
                                "HF_DATASETS_OFFLINE with a filled cache)") from None
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
        # from the saved file, so a fresh run and a resumed one write the same metrics
        metrics[task] = task_metrics(task, read_json(path))
        if shots is not None and metrics[task]["num_fewshot"] not in (None, shots):
            log.warning("lm-eval ran %s with %s shots, not the %s asked for (its config fixes them)", task,
                        metrics[task]["num_fewshot"], shots)
        write_json(output / "metrics.json", metrics)
    return metrics


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
