"""Evaluation: answer a set's prompts under a reasoning mode, judge the final responses, report rates with 95%
bootstrap intervals. Writes ``records.jsonl`` (resumable, one line per prompt) and ``metrics.json``. MMLU is scored
by log-likelihood instead (:func:`loglik_rows`): nothing is generated or judged.

:func:`evaluate` runs one set; :func:`evaluate_model` runs a list of sets against one model (``cada eval``, each
system of a study), with the judges of :func:`make_judges`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cada.config import EvalConfig, EvalSet
from cada.errors import CadaError
from cada.evaluate.metrics import breakdown, metrics
from cada.models.generate import Generator, SamplingParams
from cada.reasoning import Mode, SafetyReasoner
from cada.records import EvalItem, append_in_chunks, checkpoint_size, read_json, read_records, write_json
from cada.spec.schema import Spec


def evaluate(items: Sequence[EvalItem], generator: Generator, spec: Spec, output: str | Path, *,
             mode: str = "none", k: int = 6, max_new_tokens: int = EvalConfig().max_new_tokens, judge=None,
             rubric=None, seed: int = 0, chunk_size: int | None = None, show_progress: bool = True,
             eval_set: EvalSet | None = None) -> dict:
    """Evaluate ``items`` into ``output/records.jsonl`` + ``output/metrics.json``; returns the metrics.

    Records are appended every ``chunk_size`` prompts (default: one batch of the generator, so a kill loses at most
    the batch in flight). The folder is pinned to what made it (``eval.json``, :func:`eval_pin`): a rerun with the
    same settings resumes, one with other settings is refused before anything is generated.
    """
    from cada.judges.refusal import RefusalJudge

    if any(map(_by_loglik, items)):
        loglik_model(generator)  # a backend without the weights is refused before anything is written
    judge = judge or RefusalJudge.load()
    out = Path(output)
    rec_path = out / "records.jsonl"
    done = read_records(rec_path, repair=True)
    pin = eval_pin(items, model=getattr(generator, "name", None), mode=mode, k=k, max_new_tokens=max_new_tokens,
                   seed=seed, judge=judge, rubric=rubric, eval_set=eval_set)
    pinned = check_folder(out, pin, items, mode, records=done)
    seen = {r["id"] for r in done}
    todo = [it for it in items if it.id not in seen]
    reasoner = SafetyReasoner(spec, Mode(mode), k=k)
    params = SamplingParams(max_new_tokens=max_new_tokens, seed=seed)
    if hasattr(generator, "show_progress"):
        generator.show_progress = show_progress
    if done and not pinned:  # a folder written before eval.json existed, and it agrees: adopted
        write_json(out / PIN_FILE, pin)
        pinned = True

    def generated(chunk: list[EvalItem]) -> list[dict]:
        if not chunk:
            return []
        results = [r[0] for r in reasoner.run(generator, [it.prompt for it in chunk], params)]
        verdicts = judge.classify([r.response for r in results], [it.prompt for it in chunk])
        rows = []
        for it, r, v in zip(chunk, results, verdicts):
            row = {"id": it.id, "prompt": it.prompt, "kind": it.kind, "category": it.category, "attack": it.attack,
                   "mode": r.mode, "raw": r.raw, "reasoning": r.reasoning, "response": r.response,
                   "format_ok": r.format_ok, "judge": v.label, "cited_cases": r.cited_cases}
            if it.reference is not None:
                from cada.evaluate.utility import utility_correct

                row["reference"] = it.reference
                row["correct"] = utility_correct(r.response, it.reference, it.meta.get("scorer"))
            rows.append(row)
        if rubric is not None:
            scored = rubric.judge([row["prompt"] for row in rows], [row["response"] for row in rows])
            for row, s in zip(rows, scored):
                row["rubric_score"] = s.score
                row["rubric"] = {k: v for k, v in s.to_dict().items() if k != "raw"}
        return rows

    def answer(chunk: list[EvalItem]) -> list[dict]:
        nonlocal pinned
        by_id = {row["id"]: row for row in loglik_rows([it for it in chunk if _by_loglik(it)], generator, mode)}
        by_id.update((row["id"], row) for row in generated([it for it in chunk if not _by_loglik(it)]))
        rows = [by_id[it.id] for it in chunk]
        if not pinned:  # pinned with its first answers: a run that failed before any (a bad model name) pins nothing
            write_json(out / PIN_FILE, pin)
            pinned = True
        return rows

    done += append_in_chunks(rec_path, todo, chunk_size or checkpoint_size(generator), answer)
    order = {it.id: i for i, it in enumerate(items)}
    records = sorted((r for r in done if r["id"] in order), key=lambda r: order[r["id"]])
    m = metrics(records)
    if any(r.get("attack") for r in records):
        m["by_attack"] = breakdown(records, "attack")
    if any(r.get("category") for r in records):
        m["by_category"] = breakdown(records, "category")
    m.update(mode=mode, judge=type(judge).__name__)
    if records and all(r.get("scoring") == "loglik" for r in records):  # nothing generated, nothing judged
        m.update(judge=None, scoring="loglik")
    write_json(out / "metrics.json", m)
    return m


# --- sets scored by log-likelihood (MMLU) ---------------------------------------------------------------

def _by_loglik(it: EvalItem) -> bool:
    return it.meta.get("scorer") == "mmlu"


def loglik_model(generator):
    """The model and tokenizer of a generator that holds the weights (the local transformers backend); a server
    or an engine that gives no log-probabilities here is a one-line error."""
    model, tokenizer = getattr(generator, "model", None), getattr(generator, "tokenizer", None)
    if tokenizer is None or not callable(model):
        raise CadaError(f"benchmark mmlu is scored by the log-likelihood of the answer letters, which needs the "
                        f"model's weights: run it with --backend local (no --base-url); {type(generator).__name__} "
                        "gives no log-probabilities")
    return model, tokenizer


def loglik_rows(items: Sequence[EvalItem], generator, mode: str) -> list[dict]:
    """MMLU items scored as lm-evaluation-harness scores them: the answer letter the model gives the highest
    log-probability after the item's 5-shot prompt, as is (no chat template, no spec: the reasoning mode does not
    apply; it is recorded so that a folder's records agree with its pin). Nothing is generated or judged."""
    from cada.evaluate.utility import MMLU_LETTERS, mmlu_letter_logprobs

    if not items:
        return []
    model, tokenizer = loglik_model(generator)
    scores = mmlu_letter_logprobs(model, tokenizer, [it.prompt for it in items],
                                  batch_size=getattr(generator, "batch_size", None) or 8,
                                  max_length=getattr(generator, "context_length", None))
    rows = []
    for it, lp in zip(items, scores):
        letter = MMLU_LETTERS[max(range(len(lp)), key=lp.__getitem__)]
        rows.append({"id": it.id, "prompt": it.prompt, "kind": it.kind, "category": it.category,
                     "attack": it.attack, "mode": mode, "raw": letter, "reasoning": "", "response": letter,
                     "format_ok": None, "judge": None, "cited_cases": [], "scoring": "loglik",
                     "logprobs": dict(zip(MMLU_LETTERS, (round(x, 4) for x in lp))),
                     "reference": it.reference, "correct": letter == it.reference})
    return rows


# --- the folder's pin ---------------------------------------------------------------------------------

PIN_FILE = "eval.json"


def eval_pin(items: Sequence[EvalItem], *, model: str | None, mode: str, k: int, max_new_tokens: int, seed: int,
             judge=None, rubric=None, eval_set: EvalSet | None = None) -> dict:
    """What an evaluation folder's records depend on: the model, the mode (and k for the cases mode), the answer
    length, the seed, the judges, the set (name, source, kind, limit, attacks) and a fingerprint of its prompts.
    A file set is named by its file name: the fingerprint tells two files apart, so a moved folder still resumes."""
    import hashlib
    import json

    def judge_name(j) -> str | None:
        if j is None:
            return None
        name = type(j).__name__.removesuffix("Judge").lower()
        inner = getattr(getattr(j, "generator", None), "name", None)
        return f"{name} ({inner})" if inner else name

    prompts = json.dumps([[it.id, it.prompt, it.kind, it.attack, it.reference] for it in items], ensure_ascii=False)
    pin = {"model": model, "mode": mode, "k": k if mode == "cases" else None, "max_new_tokens": max_new_tokens,
           "seed": seed, "judge": judge_name(judge) or "refusal", "rubric": judge_name(rubric)}
    if eval_set is not None:
        pin["set"] = {"name": eval_set.name,
                      "source": Path(eval_set.file).name if eval_set.file else (eval_set.benchmark or eval_set.name),
                      "kind": eval_set.kind, "limit": eval_set.limit, "attacks": list(eval_set.attacks),
                      "templates": eval_set.templates if "inthewild" in eval_set.attacks else None,
                      "attack_file": Path(eval_set.attack_file).name if eval_set.attack_file else None}
    pin["prompts"] = f"{len(items)} prompts, sha256 {hashlib.sha256(prompts.encode()).hexdigest()[:12]}"
    return pin


def _flat(d: dict, prefix: str = ""):
    for key, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", v


def _same(key: str, old, new) -> bool:
    if old == new:
        return True
    if key == "model" and isinstance(old, str) and isinstance(new, str):  # one folder, named two ways
        return Path(old).expanduser().exists() and Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
    return False


def check_folder(out: str | Path, pin: dict, items: Sequence[EvalItem], mode: str, *,
                 records: list[dict] | None = None) -> bool:
    """Refuse an evaluation folder made with other settings than ``pin`` (one line naming the differences);
    returns whether it is pinned already. A folder with records but no ``eval.json`` (written before pins
    existed) is accepted when its records agree (same mode, prompts of this set); nothing is written here."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CadaError(f"--output {out}: is a file, give a folder")
    if records is None:
        records = read_records(out / "records.jsonl")
    if not records:
        return False  # nothing to mix with: a pin left without records is rewritten
    pin_path = out / PIN_FILE
    if pin_path.is_file():
        before = read_json(pin_path)
        if not isinstance(before, dict):
            raise CadaError(f"{pin_path}: not an evaluation pin (a JSON object); delete it to adopt the folder")
        old, new = dict(_flat(before)), dict(_flat(pin))
        diff = [f"{key}: {_short(old.get(key))} -> {_short(new.get(key))}" for key in {**old, **new}
                if not _same(key, old.get(key), new.get(key))]
        if diff:
            shown = "; ".join(diff[:4]) + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else "")
            raise CadaError(f"{pin_path}: this folder holds an evaluation with other settings ({shown}); use a new "
                            "--output, or the same settings to resume")
        return True
    modes = sorted({str(r.get("mode")) for r in records} - {mode})
    ids = {it.id for it in items}
    strangers = [r.get("id") for r in records if r.get("id") not in ids]
    if modes or strangers:
        why = (f"its records are mode {', '.join(modes)}, not {mode}" if modes else
               f"{len(strangers)} of its records answer prompts not in this set (e.g. {strangers[0]!r})")
        raise CadaError(f"{out / 'records.jsonl'}: this folder holds another evaluation ({why}); use a new --output")
    return False


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def make_judges(cfg: EvalConfig, api_key: str | None = None):
    """The refusal judge, and the StrongREJECT rubric judge when ``cfg.judge`` is ``rubric`` (over its own server:
    the policy server's key is never sent there; ``api_key``, else $CADA_JUDGE_API_KEY, else $CADA_API_KEY)."""
    from cada.judges.refusal import RefusalJudge

    rubric = None
    if cfg.judge == "rubric":
        from cada.judges.rubric import RubricJudge
        from cada.models.generate import make_generator

        if not cfg.judge_base_url:
            raise CadaError("eval.judge_base_url: the rubric judge needs an OpenAI-compatible server (`cada eval "
                            "--judge rubric` needs --judge-base-url or $CADA_JUDGE_BASE_URL)")
        rubric = RubricJudge(make_generator(cfg.judge_model, base_url=cfg.judge_base_url, backend="http",
                                            api_key=api_key or os.environ.get("CADA_JUDGE_API_KEY"),
                                            timeout=cfg.timeout, max_retries=cfg.max_retries))
    return RefusalJudge.load(), rubric


def load_sets(sets: Sequence[EvalSet]) -> list[tuple[EvalSet, list[EvalItem]]]:
    """Each set with its items; a set with none is an error naming it."""
    from cada.data.benchmarks import eval_items

    loaded = [(s, eval_items(s)) for s in sets]
    for s, items in loaded:
        if not items:
            raise CadaError(f"{s.file or s.name}: no prompts to evaluate (eval set {s.name!r})")
    return loaded


def rubric_for(items: Sequence[EvalItem], rubric):
    """The rubric judge scores harmful sets only."""
    return rubric if all(it.kind == "harmful" for it in items) else None


def evaluate_model(generator: Generator, loaded: Sequence[tuple[EvalSet, list[EvalItem]]], spec: Spec,
                   folder_of, cfg: EvalConfig, *, mode: str = "none", judges=None, seed: int = 0,
                   show_progress: bool = True) -> dict[str, dict]:
    """Every set against one model, each into ``folder_of(set)``; the rubric judge scores harmful sets only.
    Every folder is checked against its pin before the first set is answered."""
    judge, rubric = judges or make_judges(cfg)
    if any(_by_loglik(it) for _, items in loaded for it in items):
        loglik_model(generator)  # before the first set: not after the generated sets have run
    model = getattr(generator, "name", None)
    check_folders(loaded, folder_of, cfg, model=model, mode=mode, judges=(judge, rubric), seed=seed)
    return {s.name: evaluate(items, generator, spec, folder_of(s), mode=mode, k=cfg.k,
                             max_new_tokens=cfg.max_new_tokens, judge=judge, rubric=rubric_for(items, rubric),
                             seed=seed, show_progress=show_progress, eval_set=s)
            for s, items in loaded}


def check_folders(loaded: Sequence[tuple[EvalSet, list[EvalItem]]], folder_of, cfg: EvalConfig, *,
                  model: str | None, mode: str, judges, seed: int = 0) -> None:
    """:func:`check_folder` for every set of an evaluation, before any model is loaded (``cada eval``)."""
    judge, rubric = judges
    for s, items in loaded:
        pin = eval_pin(items, model=model, mode=mode, k=cfg.k, max_new_tokens=cfg.max_new_tokens, seed=seed,
                       judge=judge, rubric=rubric_for(items, rubric), eval_set=s)
        check_folder(folder_of(s), pin, items, mode)
