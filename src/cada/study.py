"""The paper's study end to end: base model under the three reasoning modes, the trained arms (CADA, rules-only
DA, SFT arms), evaluated on real benchmarks, with a report. ``cada demo`` is the CPU-sized preset;
``cada study --config FILE`` runs any size.

The study folder holds ``config.yaml``, ``pool/`` (shared training / held-back prompts and the overlap report),
``judgement/`` (the judgement stage the DPO arms' warm-ups start from), ``arms/<arm>/`` (one ``cada align`` run
folder per arm), ``eval/<system>/<set>/`` (``records.jsonl`` + ``metrics.json``), ``eval/<system>/loglik.json``,
``summary.json`` and ``report.{html,md,json}``. Every stage skips what is complete, so a killed study resumes where
it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator

from cada.align import AlignConfig, GenConfig, PoolConfig, TrainCfg, _Cfg
from cada.errors import CadaError
from cada.records import read_json, write_json

Kind = Literal["harmful", "benign", "utility"]
MODE_LABELS = {"none": "w/o SR", "codes": "SR w S (codes)", "cases": "SR w C (cases)"}
ARM_LABELS = {"cada": "CADA", "da": "Rules-only DA", "sft-dr": "SFT w DR", "sft-sc": "SFT w Sc",
              "sft-cr": "SFT w CR"}


class EvalSet(_Cfg):
    """One evaluation set: a shipped benchmark or a user file, optionally wrapped in jailbreak attacks."""

    name: str                                 # label in the report; the shipped benchmark unless file/benchmark
    benchmark: str | None = None              # shipped benchmark name (default: ``name``)
    file: str | None = None                   # CSV / JSON / JSONL of prompts instead of a shipped benchmark
    prompt_column: str = "prompt"
    reference_column: str | None = None
    kind: Kind | None = None                  # required with ``file``
    limit: int | None = Field(None, ge=1)
    attacks: list[str] = []                   # inthewild | prefix_injection | refusal_suppression
    templates: int = Field(2, ge=1)           # in-the-wild evaluation templates per prompt
    attack_file: str | None = None            # CSV of ready-made attack prompts (PAIR / GCG artifacts)
    attack_column: str = "prompt"


SUITES: dict[str, list[EvalSet]] = {
    "default": [
        EvalSet(name="strongreject", limit=100),
        EvalSet(name="strongreject+jailbreak", benchmark="strongreject", limit=50,
                attacks=["inthewild", "prefix_injection", "refusal_suppression"], templates=2),
        EvalSet(name="advbench", limit=100),
        EvalSet(name="xstest-safe"),
        EvalSet(name="xstest-unsafe"),
        EvalSet(name="gsm8k", limit=100),
    ],
    "demo": [
        EvalSet(name="strongreject-small", limit=16),
        EvalSet(name="strongreject-small+jailbreak", benchmark="strongreject-small", limit=8,
                attacks=["prefix_injection", "refusal_suppression"]),
        EvalSet(name="xstest-safe", limit=16),
        EvalSet(name="gsm8k", limit=8),
    ],
    "full": [
        EvalSet(name="strongreject"),
        EvalSet(name="strongreject+jailbreak", benchmark="strongreject",
                attacks=["inthewild", "prefix_injection", "refusal_suppression"], templates=4),
        EvalSet(name="advbench"),
        EvalSet(name="xstest-safe"),
        EvalSet(name="xstest-unsafe"),
        EvalSet(name="gsm8k", limit=500),
    ],
}


class EvalCfg(_Cfg):
    suite: str | list[EvalSet] = "default"
    max_new_tokens: int = Field(192, ge=1)
    k: int = Field(6, ge=0)                   # precedents in the prompt for the base model's cases mode
    batch_size: int = Field(16, ge=1)
    judge: Literal["refusal", "rubric"] = "refusal"
    judge_base_url: str | None = None         # rubric judge server (key: $CADA_JUDGE_API_KEY, else CADA_API_KEY)
    judge_model: str | None = None
    loglik_n: int = Field(32, ge=0)           # GSM8K reference answers scored for log-likelihood (0 = skip)
    # also answer the training pools' held-back prompts (harmful and benign, never trained on): the in-distribution
    # check of docs/training.md, reported apart from the benchmarks (heldout-harmful, heldout-benign)
    heldout: bool = False

    @field_validator("suite", mode="before")
    @classmethod
    def _suite(cls, v):
        # checked here, so a wrong name or shape is an error with the config's file and line before anything runs
        if isinstance(v, str) and v not in SUITES:
            raise ValueError(f"unknown suite {v!r}: use one of {', '.join(SUITES)} or a list of sets")
        if not isinstance(v, (str, list)):
            raise ValueError(f"a suite name ({', '.join(SUITES)}) or a list of sets")
        return v

    def sets(self) -> list[EvalSet]:
        return SUITES[self.suite] if isinstance(self.suite, str) else self.suite


class StudyConfig(_Cfg):
    """Everything a study depends on; saved as ``config.yaml`` in the study folder."""

    name: str = "study"
    model: str = "smollm2-135m"
    spec: str | None = None
    base_url: str | None = None               # serve the base model over HTTP (generation of base systems + round 1)
    seed: int = 0
    base_modes: list[Literal["none", "codes", "cases"]] = ["none", "codes", "cases"]
    arms: list[Literal["cada", "da", "sft-dr", "sft-sc", "sft-cr"]] = ["cada", "da"]
    rounds: int = Field(1, ge=1)
    warmup: bool = True
    warmup_per_label: int | None = Field(None, ge=1)
    judgement: bool = True                    # SFT on the judgement alone before the warm-up (see AlignConfig)
    judgement_per_label: int | None = Field(None, ge=1)
    precedent_fallback: bool = True
    consistency: bool = False                 # DPO twins: same analysis, wrong answer (see AlignConfig)
    calibration_per_label: int | None = Field(None, ge=2)  # DPO arms: a last pass on fresh prompts (AlignConfig)
    pool: PoolConfig = PoolConfig()
    generation: GenConfig = GenConfig()
    train: TrainCfg = TrainCfg()
    warmup_train: TrainCfg = TrainCfg(epochs=1.0)
    judgement_train: TrainCfg = TrainCfg(learning_rate=5e-5, epochs=2.0, lora_r=0, max_length=320)
    calibration_train: TrainCfg = TrainCfg(learning_rate=1e-5, epochs=1.0, lora_r=0, max_length=1024)
    eval: EvalCfg = EvalCfg()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=False), sort_keys=False)

    @property
    def shared_judgement(self) -> bool:
        """Whether the study trains one judgement stage for its DPO arms' warm-ups."""
        return self.warmup and self.judgement and any(a in ("cada", "da") for a in self.arms)

    def arm_config(self, arm: str, judgement_model: str | None = None) -> AlignConfig:
        return AlignConfig(arm=arm, model=self.model, spec=self.spec, base_url=self.base_url, seed=self.seed,
                           rounds=self.rounds, warmup=self.warmup, warmup_per_label=self.warmup_per_label,
                           judgement=self.judgement, judgement_per_label=self.judgement_per_label,
                           judgement_model=judgement_model,
                           precedent_fallback=self.precedent_fallback, consistency=self.consistency,
                           calibration_per_label=self.calibration_per_label if arm in ("cada", "da") else None,
                           pool=self.pool, generation=self.generation, train=self.train,
                           warmup_train=self.warmup_train, judgement_train=self.judgement_train,
                           calibration_train=self.calibration_train)


def demo_config(model: str = "smollm2-135m") -> StudyConfig:
    """The CPU-sized preset behind ``cada demo``: shows the direction in minutes, not the final quality."""
    return StudyConfig(
        name="demo", model=model,
        # sized for about 15 minutes on two CPU cores (15.5 min on 2026-11-30; slow days up to twice that); the
        # eval budget of 64 new tokens leaves room for the ~35-token grounded analysis plus the final response
        pool=PoolConfig(limit_per_label=24, heldout_per_label=50),
        generation=GenConfig(n=2, k=3, max_new_tokens=40, batch_size=16),
        # DPO holds policy and reference logits over the whole vocabulary: 4 pairs a step (x2 accumulation) keeps
        # the peak memory laptop-sized
        train=TrainCfg(epochs=1.0, learning_rate=2e-4, max_length=320, batch_size=4, grad_accum=2),
        warmup_train=TrainCfg(epochs=2.0, learning_rate=2e-4, max_length=320, batch_size=8),
        # no judgement stage: after one (128 prompts per label, full fine-tuning) the demo's small LoRA warm-up
        # (48 + 48 examples) left the policy repeating "This request is benign." instead of answering
        # (docs/training.md); it needs a warm-up of its own size, as in configs/embedded-full.yaml
        judgement=False,
        eval=EvalCfg(suite="demo", max_new_tokens=64, k=3, loglik_n=16),
    )


# --- evaluation items --------------------------------------------------------------------------------

def eval_items(s: EvalSet) -> list:
    """The items of one evaluation set, deterministic: with a ``limit``, the first prompts of a round-robin over
    the set's categories (a category-sorted benchmark such as StrongREJECT would otherwise give its first one or
    two categories only), then wrapped."""
    from cada.data import benchmarks as B

    if s.file:
        if not s.kind:
            raise CadaError(f"eval set {s.name!r}: a file needs a kind (harmful, benign or utility)")
        items = B.load_file(s.file, s.prompt_column, s.kind, reference_column=s.reference_column)
    else:
        items = B.load_benchmark(s.benchmark or s.name)
    if s.limit:
        items = spread_over_categories(items)[:s.limit]
    if s.attacks or s.attack_file:
        items = B.wrap(items, s.attacks, templates=s.templates, attack_file=s.attack_file,
                       attack_column=s.attack_column)
    return items


def spread_over_categories(items: list) -> list:
    """``items`` round-robin over their categories (the first of each category in order of first appearance, then
    the second of each, ...); file order within a category. A set without categories is unchanged."""
    from itertools import zip_longest

    groups: dict = {}
    for it in items:
        groups.setdefault(it.category, []).append(it)
    return [it for row in zip_longest(*groups.values()) for it in row if it is not None]


def _kind(items: list) -> str:
    kinds = {it.kind for it in items}
    return kinds.pop() if len(kinds) == 1 else "mixed"


# --- the study ---------------------------------------------------------------------------------------

class _Clock:
    """Stage timings and a whole-study ETA from rough stage weights, rescaled by the pace observed so far."""

    def __init__(self, stages: list[tuple[str, float]], console):
        self.stages, self.console = stages, console
        self.total = sum(w for _, w in stages) or 1.0
        self.done_w, self.t0, self.timings = 0.0, time.perf_counter(), {}
        self.i = 0

    def run(self, name: str, fn, *, cached: bool = False):
        weight = dict(self.stages).get(name, 0.0)
        self.i += 1
        elapsed = time.perf_counter() - self.t0
        eta = ""
        # the pace of a few small stages says little (the pools take seconds or minutes whatever the study's size)
        if self.done_w >= 0.02 * self.total and elapsed > 1:
            left = (self.total - self.done_w) * elapsed / self.done_w
            eta = f", about {left / 60:.0f} min left" if left >= 60 else f", about {left:.0f} s left"
        self.console.print(f"[bold cyan][{self.i}/{len(self.stages)}][/] {name}"
                           f"{' (done, skipped)' if cached else ''}  [dim]{elapsed / 60:.1f} min elapsed{eta}[/]")
        t = time.perf_counter()
        result = fn()
        secs = round(time.perf_counter() - t, 1)
        if not cached:
            self.timings[name] = secs
            self.done_w += weight
        else:
            self.total -= weight
        return result


def _weights(cfg: StudyConfig, sets: list[tuple[EvalSet, list]], n_train: int) -> list[tuple[str, float]]:
    """Rough relative cost of each stage (units: generated tokens at batch size; only ratios matter)."""
    mode_cost = {"none": 1.0, "cases": 1.6, "codes": 2.5}
    n_items = sum(len(items) for _, items in sets) + (2 * cfg.pool.heldout_per_label if cfg.eval.heldout else 0)
    gen_tokens = n_items * cfg.eval.max_new_tokens
    stages: list[tuple[str, float]] = [("pools", 2000.0)]
    for m in cfg.base_modes:
        stages.append((f"eval base-{m}", gen_tokens * mode_cost[m]))
    g = cfg.generation
    if cfg.shared_judgement:
        # short completions: about a third of a warm-up example each
        n_judged = max(n_train, 2 * (cfg.warmup_per_label or 0), 2 * (cfg.judgement_per_label or 0))
        stages.append(("train judgement", n_judged * cfg.judgement_train.epochs * 60.0))
    for arm in cfg.arms:
        mode = {"cada": "cases", "da": "codes", "sft-dr": "none", "sft-sc": "codes", "sft-cr": "cases"}[arm]
        selfgen = n_train * g.n * g.max_new_tokens * mode_cost[mode] * cfg.rounds
        per_ex = 180.0 if arm in ("cada", "da") else 60.0
        n_warm = max(n_train, 2 * (cfg.warmup_per_label or 0))
        warm = (n_warm * 0.5 * cfg.warmup_train.epochs * per_ex + n_warm / 2 * 60.0) if cfg.warmup else 0.0
        training = n_train * per_ex * cfg.train.epochs + warm
        calibration = 0.0
        if cfg.calibration_per_label and arm in ("cada", "da"):  # answers + judgement and whole rows, once
            n_cal = cfg.calibration_per_label
            calibration = n_cal * 60.0 + (1.5 * n_cal * 60.0 + 1.25 * n_cal * per_ex) * cfg.calibration_train.epochs
        stages.append((f"train {arm}", selfgen + training * cfg.rounds + calibration))
        stages.append((f"eval {arm}", gen_tokens * 1.3))
    stages.append(("utility", 500.0 * (1 + len(cfg.arms))))
    stages.append(("report", 200.0))
    return stages


def _headline(metrics: dict[str, dict], sets: dict[str, dict], loglik: float | None) -> dict:
    def pooled(chosen: dict, pred) -> float | None:
        num = den = 0.0
        for name, info in chosen.items():
            m = metrics.get(name)
            if m and pred(info) and m.get("n"):
                key = "accuracy" if info["kind"] == "utility" else "refused_or_partial_rate"
                if key in m and m[key]["value"] is not None:
                    num += m[key]["value"] * m["n"]
                    den += m["n"]
        return round(num / den, 4) if den else None

    bench = {k: v for k, v in sets.items() if not v.get("heldout")}
    held = {k: v for k, v in sets.items() if v.get("heldout")}
    out = {"harmful_refusal": pooled(bench, lambda i: i["kind"] == "harmful" and not i.get("attacks")),
           "jailbreak_refusal": pooled(bench, lambda i: i["kind"] == "harmful" and bool(i.get("attacks"))),
           "benign_refusal": pooled(bench, lambda i: i["kind"] == "benign"),
           "gsm8k_accuracy": pooled(bench, lambda i: i["kind"] == "utility"),
           "reference_loglik": loglik}
    if held:
        out["heldout_harmful_refusal"] = pooled(held, lambda i: i["kind"] == "harmful")
        out["heldout_benign_refusal"] = pooled(held, lambda i: i["kind"] == "benign")
    return out


def _verdict(headline: dict) -> dict:
    """Did CADA do what the paper claims at this size? Plain booleans for the summary."""
    base, cada, da = headline.get("base-none"), headline.get("cada"), headline.get("da")
    if not base or not cada:
        return {}

    def gt(a, b, key):
        return None if a.get(key) is None or b.get(key) is None else a[key] > b[key]

    def le(a, b, key):
        return None if a.get(key) is None or b.get(key) is None else a[key] <= b[key]

    out = {"cada_refuses_more_harmful_than_base": gt(cada, base, "harmful_refusal"),
           "cada_refuses_more_jailbreaks_than_base": gt(cada, base, "jailbreak_refusal"),
           "cada_no_more_benign_refusal_than_base": le(cada, base, "benign_refusal")}
    if da:
        out["cada_refuses_more_harmful_than_da"] = gt(cada, da, "harmful_refusal")
        out["cada_no_more_benign_refusal_than_da"] = le(cada, da, "benign_refusal")
    return out


def run_study(cfg: StudyConfig, output: str | Path, *, show_progress: bool = True, console=None) -> dict:
    """Run (or resume) a study into ``output``; returns the summary (also ``output/summary.json``)."""
    from rich.console import Console

    from cada.align import align, prepare_pools
    from cada.evaluate import evaluate
    from cada.models.generate import make_generator
    from cada.models.load import release_models, resolve_trainable
    from cada.spec.schema import load_spec

    console = console or Console(stderr=True, quiet=not show_progress)
    # mistakes that would otherwise surface only after the pools and the base evaluations
    if cfg.arms:
        resolve_trainable(cfg.model)  # the arms train on local weights
    judge, rubric = _judges(cfg)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    if saved.exists():
        try:
            before = StudyConfig.model_validate(yaml.safe_load(saved.read_text()))
        except Exception:
            raise CadaError(f"{saved}: unreadable study config; use a new --output") from None
        if before != cfg:
            raise CadaError(f"{saved}: this study folder was started with another config "
                            f"({before.differences(cfg)}); use a new --output or the same settings to resume")
    saved.write_text(cfg.to_yaml())
    t_start = time.perf_counter()
    # a resumed study adds this session's time to the earlier sessions' (their summary is written as it goes)
    previous = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
    prior = previous.get("wall_seconds", 0.0)
    spec = load_spec(cfg.spec)
    sets = [(s, eval_items(s)) for s in cfg.eval.sets()]
    for s, items in sets:
        if not items:
            raise CadaError(f"eval set {s.name!r} has no prompts")
    set_info = {s.name: {"kind": _kind(items), "n": len(items), **({"attacks": s.attacks + (
        [Path(s.attack_file).stem] if s.attack_file else [])} if s.attacks or s.attack_file else {})}
        for s, items in sets}
    n_train = 2 * (cfg.pool.limit_per_label or 1500)
    clock = _Clock(_weights(cfg, sets, n_train), console)

    # 1. pools, shared by every arm
    pool_dir = out / "pool"
    # a DPO arm's config draws the pools, so that the calibration prompts are set aside when it has a pass
    first = cfg.arm_config(next((a for a in cfg.arms if a in ("cada", "da")), cfg.arms[0] if cfg.arms else "cada"))
    pool_done = (pool_dir / "report.json").exists() and "study_overlap" in json.loads(
        (pool_dir / "report.json").read_text())
    train_prompts, _, pool_report = clock.run("pools", lambda: _pools(first, out, spec, sets), cached=pool_done)
    overlap = {"removed_for_eval_overlap": pool_report.get("removed_for_eval_overlap"),
               "train_prompts": len(train_prompts), **pool_report["study_overlap"]}
    if cfg.eval.heldout:  # the pools' held-back prompts, one set per label
        sets = sets + _heldout_sets(pool_dir)
        set_info.update({s.name: {"kind": _kind(items), "n": len(items), "heldout": True}
                         for s, items in sets if s.name.startswith("heldout-")})

    systems: dict[str, dict] = {}
    models: dict[str, str] = {"base": cfg.model}
    metrics: dict[str, dict] = {}
    training: dict[str, dict] = {}

    def eval_system(name: str, model: str, mode: str, base_url: str | None, backend: str = "auto") -> None:
        sdir = out / "eval" / name
        done = all((sdir / s.name / "metrics.json").exists() for s, _ in sets)

        def go():
            gen = make_generator(model, base_url=base_url, backend=backend, batch_size=cfg.eval.batch_size,
                                 show_progress=show_progress)
            res = {}
            for s, items in sets:
                res[s.name] = evaluate(items, gen, spec, sdir / s.name, mode=mode, k=cfg.eval.k,
                                       max_new_tokens=cfg.eval.max_new_tokens, judge=judge,
                                       rubric=rubric if set_info[s.name]["kind"] == "harmful" else None,
                                       seed=cfg.seed, show_progress=show_progress)
            return res

        if done:
            metrics[name] = clock.run(f"eval {name}", lambda: {s.name: json.loads(
                (sdir / s.name / "metrics.json").read_text()) for s, _ in sets}, cached=True)
        else:
            metrics[name] = clock.run(f"eval {name}", go)

    def write_summary(loglik: dict, *, partial: bool, report: dict | None = None) -> dict:
        headline = {name: _headline(metrics.get(name, {}), set_info, loglik.get(info["model"]))
                    for name, info in systems.items() if name in metrics}
        summary = {
            "name": cfg.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": cfg.seed,
            "judge": "refusal (offline MiniLM head + rules)" if cfg.eval.judge == "refusal"
            else f"refusal + StrongREJECT rubric ({cfg.eval.judge_model})",
            "models": models, "systems": systems, "benchmarks": set_info, "metrics": metrics,
            "headline": headline, "verdict": _verdict(headline), "training": training, "overlap": overlap,
            "timings": {**previous.get("timings", {}), **clock.timings}, "config": cfg.model_dump(mode="json"),
            "wall_seconds": round(prior + time.perf_counter() - t_start, 1),
        }
        if partial:  # a long study shows what it has so far: `cada report DIR` renders it
            summary["partial"] = True
        if report:
            summary["report"] = report
        write_json(out / "summary.json", summary)
        return summary

    # 2. the base model under each reasoning mode; the plain one first, the ones with the spec in the prompt (the
    # slowest to evaluate) after the arms, so a study that is stopped early has the headline comparison
    for m in cfg.base_modes:
        systems[f"base-{m}"] = {"model": "base", "mode": m, "label": f"Base ({MODE_LABELS[m]})"}
    for arm in cfg.arms:
        systems[arm] = {"model": arm, "mode": "none", "label": ARM_LABELS[arm]}
    early = [m for m in cfg.base_modes if m == "none"]
    for m in early:
        eval_system(f"base-{m}", cfg.model, m, cfg.base_url)
        write_summary({}, partial=True)

    # 3. the judgement stage, trained once and shared by the DPO arms (its rows are the same for every arm)
    judgement_model = None
    if cfg.shared_judgement:
        from cada.align import judgement_prompts, train_judgement
        from cada.train import finished

        jdir = out / "judgement"
        training["judgement"] = clock.run(
            "train judgement", lambda: train_judgement(first, judgement_prompts(first, out), cfg.model, jdir),
            cached=finished(jdir))
        judgement_model = str(jdir / "model")

    # 4. each arm: align into arms/<arm> (sharing the pool), then evaluate without the spec in the prompt
    for arm in cfg.arms:
        adir = out / "arms" / arm
        if not (adir / "pool").exists():  # copied whole or not at all: a half copy would rebuild the pools
            shutil.rmtree(adir / "pool.tmp", ignore_errors=True)
            shutil.copytree(pool_dir, adir / "pool.tmp")
            os.replace(adir / "pool.tmp", adir / "pool")
        arm_done = (adir / "summary.json").exists()
        if arm_done:
            summary = clock.run(f"train {arm}", lambda: read_json(adir / "summary.json"),
                                cached=True)
        else:
            summary = clock.run(f"train {arm}", lambda: align(cfg.arm_config(arm, judgement_model), adir,
                                                               show_progress=show_progress))
        models[arm] = summary["model"]
        training[arm] = summary
        # a trained model is a local folder: never sent to $CADA_BASE_URL's server as a model name
        eval_system(arm, summary["model"], "none", None, backend="local")
        release_models()  # one trained model in memory at a time (GPU memory for the next arm's training)
        write_summary({}, partial=True)

    for m in cfg.base_modes:
        if m not in early:
            eval_system(f"base-{m}", cfg.model, m, cfg.base_url)
            write_summary({}, partial=True)

    # 5. utility: mean log-likelihood of GSM8K reference answers, per model
    loglik = clock.run("utility", lambda: _loglik(cfg, out, models))

    write_summary(loglik, partial=False)  # what the report reads

    # 6. the report
    def report():
        from cada.report import write_report

        return {k: str(v) for k, v in write_report(out).items()}

    paths = clock.run("report", report)
    return write_summary(loglik, partial=False, report=paths)  # with the report's timing and paths


def _heldout_sets(pool_dir: Path) -> list[tuple[EvalSet, list]]:
    """The training pools' held-back prompts as two evaluation sets (``heldout-harmful``, ``heldout-benign``)."""
    from cada.data.pools import read_pool, write_jsonl

    held = read_pool(pool_dir / "heldout.jsonl")
    out = []
    for label in ("harmful", "benign"):
        path = pool_dir / f"heldout-{label}.jsonl"
        if not path.exists():
            write_jsonl(path, [p for p in held if p.label == label])
        s = EvalSet(name=f"heldout-{label}", file=str(path), kind=label)
        items = eval_items(s)
        if items:
            out.append((s, items))
    return out


def _judges(cfg: StudyConfig):
    from cada.judges.refusal import RefusalJudge

    rubric = None
    if cfg.eval.judge == "rubric":
        from cada.judges.rubric import RubricJudge
        from cada.models.generate import make_generator

        if not cfg.eval.judge_base_url:
            raise CadaError("eval.judge_base_url: the rubric judge needs an OpenAI-compatible server")
        rubric = RubricJudge(make_generator(cfg.eval.judge_model, base_url=cfg.eval.judge_base_url, backend="http",
                                            api_key=os.environ.get("CADA_JUDGE_API_KEY")))
    return RefusalJudge.load(), rubric


def _pools(cfg: AlignConfig, out: Path, spec, sets: list[tuple[EvalSet, list]]) -> tuple[list, list, dict]:
    """The shared training / held-back pools, with every prompt that overlaps (exactly or nearly) any of this
    study's evaluation prompts removed from training -- a second guard after the pools' own check against the
    shipped benchmarks, and the only one for user pools and user eval files."""
    from cada.align import prepare_pools
    from cada.data.overlap import fingerprint
    from cada.data.pools import drop_eval_overlap, read_pool, write_jsonl

    train, held, report = prepare_pools(cfg, out, spec)
    if "study_overlap" in report:
        return train, held, report
    # every prompt of each set, not only the ones this study answers: a limited set's other prompts stay
    # evaluation prompts
    every = [(s, eval_items(s.model_copy(update={"limit": None})) if s.limit else items) for s, items in sets]
    # the study's sets as written and without their jailbreak wrappers; their requests for the rewording check
    texts = {s.name: [it.prompt for it in items] + [it.meta["base_prompt"] for it in items
                                                   if it.meta.get("base_prompt")] for s, items in every}
    requests = {it.meta.get("base_prompt") or it.prompt: s.name for s, items in every for it in items
                if it.kind in ("harmful", "benign")}

    def check(prompts: list) -> tuple[list, list[dict]]:
        return drop_eval_overlap(prompts, sets=texts, paraphrase_refs=requests)

    train_before = len(train)
    kept, removed = check(train)
    if removed:
        train = kept
        write_jsonl(out / "pool" / "train.jsonl", train)
    # the warm-up, judgement and calibration prompts reach beyond the self-generation pool: the same check for them
    for extra in ("warmup", "judgement", "calibration"):
        path = out / "pool" / f"{extra}.jsonl"
        if path.exists():
            prompts = read_pool(path)
            rest, hit = check(prompts)
            if hit:
                write_jsonl(path, rest)
            report.setdefault("study_overlap_extra", {})[extra] = len(hit)
    report["study_overlap"] = {"eval_prompts_checked": len({t for ts in texts.values() for t in ts}),
                               "train_removed": train_before - len(train),
                               "examples": [{"train": r["prompt"][:120], "eval": fingerprint(r["matched"]),
                                             "eval_set": r["eval_set"], "kind": r["kind"],
                                             "similarity": r["similarity"]} for r in removed[:10]]}
    report["train"] = len(train)
    write_json(out / "pool" / "report.json", report)
    return train, held, report


def _loglik(cfg: StudyConfig, out: Path, models: dict[str, str]) -> dict[str, float | None]:
    from cada.data.benchmarks import load_benchmark
    from cada.models.load import load_model, release_models
    from cada.utility import reference_loglik

    res: dict[str, float | None] = {}
    n = cfg.eval.loglik_n
    items = load_benchmark("gsm8k")[:n] if n else []
    for key, model in models.items():
        path = out / "eval" / ("base-loglik" if key == "base" else key) / "loglik.json"
        if path.exists():
            res[key] = json.loads(path.read_text())["mean"]
            continue
        if not items or (key == "base" and cfg.base_url):
            res[key] = None
            continue
        m, tok = load_model(model)
        vals = reference_loglik(m, tok, [it.prompt for it in items], [it.reference for it in items])
        del m, tok
        release_models()
        mean = round(sum(vals) / len(vals), 4)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model": model, "n": len(vals), "mean": mean}))
        res[key] = mean
    return res
