"""The paper's study end to end, as stages read in order:

    pools             pool/                  shared training / held-back prompts, checked against the study's sets
    attack <set>      attacks/<set>/         a searched attack (PAIR, PAP) against the base model, once; every
                                             system answers its best attack per goal
    eval base-none    eval/base-none/<set>/  the plain base model first, so a study stopped early has the headline
    train judgement   judgement/             the judgement stage the DPO arms' warm-ups start from
    train <arm>       arms/<arm>/            one ``cada align`` run folder per arm (pipeline.align)
    eval <arm>        eval/<arm>/<set>/      the trained model on the bare request (context distillation)
    eval base-<mode>  eval/base-<mode>/      the base model with the spec in its prompt (the slowest) last
    utility           eval/*/loglik.json     mean log-likelihood of GSM8K reference answers
    report            report.{html,md,json}

``summary.json`` is rewritten after every evaluated system (``partial: true`` until the end), so ``cada report``
renders a study that is still running. ``cada demo`` is the CPU-sized preset (``cada/recipes/demo.yaml``).
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from cada.config import ARMS, MODE_LABELS, EvalSet, StudyConfig, check_layout
from cada.errors import CadaError
from cada.evaluate.metrics import headline, verdict
from cada.pipeline.pools import heldout_sets, judgement_prompts, study_pools
from cada.pipeline.stages import Ledger, Stage, StageLog, check_server
from cada.records import read_json, read_records, write_json

MODE_COST = {"none": 1.0, "cases": 1.6, "codes": 2.5}  # relative generation cost of a reasoning mode


class Clock:
    """Stage lines with a whole-study ETA from rough stage weights, rescaled by the pace observed so far."""

    def __init__(self, weights: dict[str, float], console):
        self.weights, self.console = weights, console
        self.total = sum(weights.values()) or 1.0
        self.done_w, self.t0, self.i = 0.0, time.perf_counter(), 0

    def announce(self, name: str, done: bool) -> None:
        self.i += 1
        elapsed = time.perf_counter() - self.t0
        eta = ""
        # the pace of a few small stages says little (the pools take seconds or minutes whatever the study's size)
        if self.done_w >= 0.02 * self.total and elapsed > 1:
            left = (self.total - self.done_w) * elapsed / self.done_w
            eta = f", about {left / 60:.0f} min left" if left >= 60 else f", about {left:.0f} s left"
        self.console.print(f"[bold cyan][{self.i}/{len(self.weights)}][/] {name}"
                           f"{' (done, skipped)' if done else ''}  [dim]{elapsed / 60:.1f} min elapsed{eta}[/]")

    def finished(self, name: str, ran: bool) -> None:
        if ran:
            self.done_w += self.weights.get(name, 0.0)
        else:
            self.total -= self.weights.get(name, 0.0)


def weights(cfg: StudyConfig, n_items: int, n_train: int) -> dict[str, float]:
    """Rough relative cost of each stage (units: generated tokens at batch size; only ratios matter)."""
    gen_tokens = (n_items + (2 * cfg.pool.heldout_per_label if cfg.eval.heldout else 0)) * cfg.eval.max_new_tokens
    out = {"pools": 2000.0}
    from cada.evaluate.pair import PairSettings
    from cada.evaluate.pap import PapSettings

    a = cfg.eval.attack
    for es in cfg.eval.sets():  # a searched attack: every query an attacker output, the target's answer, a rating
        if es.searched:
            queries = a.streams * a.iterations if es.searched == "pair" else len(a.techniques) * a.samples
            default = (PairSettings if es.searched == "pair" else PapSettings).attacker_max_new_tokens
            tokens = (a.attacker_max_new_tokens or default) + cfg.eval.max_new_tokens
            out[f"attack {es.name}"] = (es.limit or 100) * queries * tokens * 0.5  # about half the budget is used
    out.update({f"eval base-{m}": gen_tokens * MODE_COST[m] for m in cfg.base_modes})
    g = cfg.generation
    if cfg.shared_judgement:  # short completions: about a third of a warm-up example each
        n_judged = max(n_train, 2 * (cfg.warmup_per_label or 0), 2 * (cfg.judgement_per_label or 0))
        out["train judgement"] = n_judged * cfg.judgement_train.epochs * 60.0
    for arm in cfg.arms:
        a = ARMS[arm]
        if a.online:  # sampling every prompt's group each step, then one update on it
            t = cfg.rl_train
            n_rl = n_train if cfg.rl.prompts == "mixed" else n_train / 2
            out[f"train {arm}"] = n_rl * t.num_generations * (t.max_completion_length * MODE_COST[a.mode]
                                                              + 60.0) * t.epochs * cfg.rounds
            out[f"eval {arm}"] = gen_tokens * 1.3
            continue
        selfgen = n_train * g.n * g.max_new_tokens * MODE_COST[a.mode] * cfg.rounds
        per_ex = 180.0 if a.method == "dpo" else 60.0
        n_warm = max(n_train, 2 * (cfg.warmup_per_label or 0))
        warm = (n_warm * 0.5 * cfg.warmup_train.epochs * per_ex + n_warm / 2 * 60.0) if cfg.warmup and a.staged \
            else 0.0
        calibration = 0.0
        if cfg.calibration_per_label and a.staged:  # answers + judgement and whole rows, once
            n_cal = cfg.calibration_per_label
            calibration = n_cal * 60.0 + (1.5 * n_cal * 60.0 + 1.25 * n_cal * per_ex) * cfg.calibration_train.epochs
        out[f"train {arm}"] = selfgen + (n_train * per_ex * cfg.train.epochs + warm) * cfg.rounds + calibration
        out[f"eval {arm}"] = gen_tokens * 1.3
    out["utility"] = 500.0 * (1 + len(cfg.arms))
    out["report"] = 200.0
    return out


def set_kind(items: list) -> str:
    kinds = {it.kind for it in items}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def set_info(s: EvalSet, items: list, heldout: bool = False) -> dict:
    from cada.data.benchmarks import attack_file_name

    attacks = s.attacks + ([attack_file_name(s.attack_file)] if s.attack_file else [])
    return {"kind": set_kind(items), "n": len(items), "benchmark": s.benchmark or (None if s.file else s.name),
            **({"attacks": attacks} if attacks else {}),
            **({"heldout": True} if heldout else {})}


class StudyRun:
    """One study's state: its config, folder, sets, ledger, the results so far, and the summary it writes."""

    def __init__(self, cfg: StudyConfig, out: Path, console, show_progress: bool):
        from cada.evaluate.run import load_sets, make_judges
        from cada.spec.schema import load_spec

        self.cfg, self.out, self.console, self.show_progress = cfg, out, console, show_progress
        self.judges = make_judges(cfg.eval)
        self.spec = load_spec(cfg.spec)
        sets = cfg.eval.sets()
        # a searched attack's set (attacks: [pair] / [pap]) holds its goals until the attack stage has run: the
        # pools are checked against them, and the replayed attacks take their place (searched_attack)
        self.searched = {es.name: es for es in sets if es.searched}
        self.sets = load_sets([es.model_copy(update={"attacks": []}) if es.searched else es for es in sets])
        for es, items in self.sets:
            if es.name in self.searched and any(it.kind != "harmful" for it in items):
                raise CadaError(f"eval set {es.name!r}: {self.searched[es.name].searched} searches for attacks on "
                                "harmful requests; give it a harmful benchmark or file")
        self.info = {s.name: set_info(s, items) for s, items in self.sets}
        self.ledger = Ledger.load(out)
        self.previous = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
        self.t0 = time.perf_counter()
        self.clock = Clock(weights(cfg, sum(len(i) for _, i in self.sets), 2 * (cfg.pool.limit_per_label or 1500)),
                           console)
        self.systems: dict[str, dict] = {}
        self.models: dict[str, str] = {"base": cfg.model}
        self.metrics: dict[str, dict] = {}
        self.training: dict[str, dict] = {}
        self.overlap: dict = {}
        self.licenses: dict = {}  # shipped training source -> its data license

    def step(self, st: Stage):
        """Run a stage unless it is done (the clock's line either way); returns what its work returned."""
        done = st.done()
        self.clock.announce(st.name, done)
        if done:
            self.clock.finished(st.name, False)
            return None
        t = time.perf_counter()
        result = st.work()
        self.ledger.record(st.name, time.perf_counter() - t, None)  # the seconds only: results stay in files
        self.clock.finished(st.name, True)
        return result

    def write_summary(self, loglik: dict, *, partial: bool, report: dict | None = None) -> dict:
        cfg = self.cfg
        heads = {name: headline(self.metrics.get(name, {}), self.info, loglik.get(info["model"]))
                 for name, info in self.systems.items() if name in self.metrics}
        timings = {**self.previous.get("timings", {}),
                   **{k: v["seconds"] for k, v in self.ledger.entries.items() if "seconds" in v}}
        summary = {
            "name": cfg.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": cfg.seed,
            "judge": "refusal (offline MiniLM head + rules)" if cfg.eval.judge == "refusal"
            else f"refusal + StrongREJECT rubric ({cfg.eval.judge_model})",
            "models": self.models, "systems": self.systems, "benchmarks": self.info, "metrics": self.metrics,
            "headline": heads, "verdict": verdict(heads, self.systems)["flags"], "training": self.training,
            "overlap": self.overlap, "licenses": self.licenses, "timings": timings, "config": cfg.model_dump(mode="json"),
            "wall_seconds": round(self.previous.get("wall_seconds", 0.0) + time.perf_counter() - self.t0, 1),
        }
        if partial:  # a long study shows what it has so far: `cada report DIR` renders it
            summary["partial"] = True
        if report:
            summary["report"] = report
        write_json(self.out / "summary.json", summary)
        return summary


def eval_stage(s: StudyRun, name: str, model: str, mode: str, base_url: str | None, backend: str = "auto") -> Stage:
    from cada.evaluate.run import evaluate_model
    from cada.models.generate import make_generator

    sdir = s.out / "eval" / name

    def work() -> dict:
        gen = make_generator(model, base_url=base_url, backend=backend, batch_size=s.cfg.eval.batch_size,
                             timeout=s.cfg.eval.timeout, max_retries=s.cfg.eval.max_retries,
                             show_progress=s.show_progress)
        return evaluate_model(gen, s.sets, s.spec, lambda es: sdir / es.name, s.cfg.eval, mode=mode,
                              judges=s.judges, seed=s.cfg.seed, show_progress=s.show_progress)

    return Stage(f"eval {name}", tuple(sdir / es.name / "metrics.json" for es, _ in s.sets), work, sdir)


def evaluate_system(s: StudyRun, name: str, model: str, mode: str, base_url: str | None,
                    backend: str = "auto") -> None:
    st = eval_stage(s, name, model, mode, base_url, backend)
    result = s.step(st)
    s.metrics[name] = result if result is not None else {
        es.name: read_json(st.where / es.name / "metrics.json") for es, _ in s.sets}
    s.write_summary({}, partial=True)


def check(cfg: StudyConfig, out: Path) -> None:
    """Mistakes that would otherwise surface only after the pools and the base evaluations."""
    from cada.models.load import resolve_trainable

    if cfg.arms:
        resolve_trainable(cfg.model)  # the arms train on local weights
    check_server(cfg.base_url)
    if cfg.eval.judge == "rubric" and cfg.eval.judge_base_url:
        check_server(cfg.eval.judge_base_url)
    if any(es.searched and not all(p.exists() for p in attack_done(out, es.name)) for es in cfg.eval.sets()):
        check_server(cfg.eval.attack.attacker_base_url, flag="eval.attack.attacker_base_url")
        check_server(cfg.eval.attack.judge_base_url, flag="eval.attack.judge_base_url")
    saved = out / "config.yaml"
    if saved.exists():
        check_layout(saved)
        try:
            before = StudyConfig.model_validate(yaml.safe_load(saved.read_text()))
        except Exception:
            raise CadaError(f"{saved}: unreadable study config; use a new --output") from None
        if before != cfg:
            raise CadaError(f"{saved}: this study folder was started with another config "
                            f"({before.differences(cfg)}); use a new --output or the same settings to resume")


def pools_stage(s: StudyRun, first) -> Stage:
    """The shared pools; a DPO arm's config draws them, so the calibration prompts are set aside when it has a
    pass. ``study_pools`` is idempotent: reading the pools back afterwards completes a check a kill cut short."""
    return Stage("pools", (s.out / "pool" / "report.json",), lambda: study_pools(first, s.out, s.spec, s.sets),
                 s.out / "pool")


def run_study(cfg: StudyConfig, output: str | Path, *, show_progress: bool = True, console=None) -> dict:
    """Run (or resume) a study into ``output``; returns the summary (also ``output/summary.json``)."""
    from rich.console import Console

    out = Path(output)
    check(cfg, out)
    console = console or Console(stderr=True, quiet=not show_progress)
    s = StudyRun(cfg, out, console, show_progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    first = cfg.arm_config(next((a for a in cfg.arms if ARMS[a].staged), cfg.arms[0] if cfg.arms else "cada"))
    s.step(pools_stage(s, first))
    train_prompts, _, pool_report = study_pools(first, out, s.spec, s.sets)  # read back: written once
    s.overlap = {"removed_for_eval_overlap": pool_report.get("removed_for_eval_overlap"),
                 "train_prompts": len(train_prompts), **pool_report["study_overlap"]}
    s.licenses = dict(pool_report.get("licenses") or {})
    for es in s.searched.values():
        searched_attack(s, es)
    if cfg.eval.heldout:  # the pools' held-back prompts, one set per label
        held = heldout_sets(out / "pool")
        s.sets = s.sets + held
        s.info.update({es.name: set_info(es, items, heldout=True) for es, items in held})
    for m in cfg.base_modes:
        s.systems[f"base-{m}"] = {"model": "base", "mode": m, "label": f"Base ({MODE_LABELS[m]})"}
    for arm in cfg.arms:
        s.systems[arm] = {"model": arm, "mode": "none", "label": ARMS[arm].label}
    if "none" in cfg.base_modes:
        evaluate_system(s, "base-none", cfg.model, "none", cfg.base_url)
    judgement_model = shared_judgement(s, first)
    for arm in cfg.arms:
        train_arm(s, arm, judgement_model)
    for m in cfg.base_modes:
        if m != "none":
            evaluate_system(s, f"base-{m}", cfg.model, m, cfg.base_url)
    loglik = utility(s)
    s.write_summary(loglik, partial=False)  # what the report reads
    # the report is rewritten on every run (a resumed study has new numbers): not a stage that can be done
    s.clock.announce("report", False)
    t = time.perf_counter()
    from cada.report import write_report

    paths = {k: str(v) for k, v in write_report(out).items()}
    s.ledger.record("report", time.perf_counter() - t, None)
    return s.write_summary(loglik, partial=False, report=paths)  # with the report's timing and paths


def attack_done(out: Path, name: str) -> tuple[Path, ...]:
    """The files that say a searched attack's stage is done: its summary, then its exported attacks."""
    folder = out / "attacks" / name
    return folder / "summary.json", folder / "attacks.csv"


def searched_attack(s: StudyRun, es) -> None:
    """PAIR or PAP against the base model (bare request) on the set's goals, into ``attacks/<set>/``, once; the
    set then holds one prompt per goal, the best attack the search found, which every system answers (the paper's
    arms are compared on the same attacks). A goal for which the attacker never wrote a usable prompt is replayed
    as its plain request, so the set's ASR is over goals, as the paper's, and the summary counts such goals."""
    import os

    from cada.evaluate.attack import Goal, Target, attack_models, run_search
    from cada.records import EvalItem, read_rows

    cfg, a = s.cfg, s.cfg.eval.attack
    kind = es.searched
    i = next(j for j, (x, _) in enumerate(s.sets) if x.name == es.name)
    plain = s.sets[i][1]
    goals = [Goal.from_item(it) for it in plain]
    folder = s.out / "attacks" / es.name
    # the base model as the eval stage reaches it: the study's server, else $CADA_BASE_URL's, else local weights
    base_url = cfg.base_url or os.environ.get("CADA_BASE_URL")

    def work() -> dict:
        flags = {"base_url": "base_url", **{k: f"eval.attack.{k}" for k in
                                            ("attacker_model", "attacker_base_url", "judge_model", "judge_base_url")}}
        target_gen, attacker, judge_gen, names = attack_models(
            cfg.model, base_url, None, a.attacker_model, a.attacker_base_url, a.judge_model, a.judge_base_url,
            {"timeout": cfg.eval.timeout, "max_retries": cfg.eval.max_retries}, flags)
        target = Target(target_gen, s.spec, mode="none", k=cfg.eval.k, max_new_tokens=cfg.eval.max_new_tokens,
                        seed=cfg.seed)
        tokens = {"attacker_max_new_tokens": a.attacker_max_new_tokens} if a.attacker_max_new_tokens else {}
        if kind == "pair":
            from cada.evaluate.pair import PairSettings

            settings = PairSettings(streams=a.streams, iterations=a.iterations, success=a.success, seed=cfg.seed,
                                    **tokens)
        else:
            from cada.evaluate.pap import PapSettings

            settings = PapSettings(techniques=list(a.techniques), samples=a.samples, success=a.success,
                                   seed=cfg.seed, **tokens)

        def log(line: str) -> None:
            if s.show_progress:
                s.console.print(f"  {kind} {line}", markup=False, highlight=False)

        return run_search(kind, goals, attacker, target, judge_gen, names, folder, settings, log=log)

    # a stage whose export was lost runs again: every goal is finished in its folder, so nothing is asked again
    s.step(Stage(f"attack {es.name}", attack_done(s.out, es.name), work, folder))
    best = {r["goal_id"]: r for r in read_rows(folder / "attacks.csv")}
    items = [EvalItem(id=f"{kind}-{it.id}", prompt=best[it.id]["prompt"] if it.id in best else it.prompt,
                      kind="harmful", category=it.category, attack=kind,
                      meta={"base_prompt": it.prompt, "attack_found": it.id in best}) for it in plain]
    s.sets[i] = (es, items)
    found = read_json(folder / "summary.json")
    s.info[es.name] = {"kind": "harmful", "n": len(items), "benchmark": es.benchmark or (None if es.file else es.name),
                       "attacks": [kind], "goals": len(goals), "goals_without_attack": len(goals) - len(best),
                       "search": {k: found.get(k) for k in ("asr_judge", "asr_refusal_judge", "seconds_per_goal",
                                                            "queries_per_goal", "wall_seconds") if k in found}}


def shared_judgement(s: StudyRun, first) -> str | None:
    """The judgement stage, trained once and shared by the DPO arms (its rows are the same for every arm)."""
    if not s.cfg.shared_judgement:
        return None
    from cada.pipeline.align import judgement_stage

    jdir = s.out / "judgement"
    st = judgement_stage(first, judgement_prompts(first, s.out), s.cfg.model, jdir, StageLog(show=False),
                         name="train judgement")
    info = s.step(st) or {}
    info["judgement_seconds"] = read_json(jdir / "train_info.json")["train_seconds"]
    info["judgement_examples"] = len(read_records(jdir / "judgement.jsonl"))
    s.training["judgement"] = info
    return str(jdir / "model")


def train_arm(s: StudyRun, arm: str, judgement_model: str | None) -> None:
    """Align one arm into arms/<arm> (sharing the pool), then evaluate it without the spec in the prompt."""
    from cada.models.load import release_models
    from cada.pipeline.align import align

    adir = s.out / "arms" / arm
    if not (adir / "pool").exists():  # copied whole or not at all: a half copy would rebuild the pools
        shutil.rmtree(adir / "pool.tmp", ignore_errors=True)
        shutil.copytree(s.out / "pool", adir / "pool.tmp")
        os.replace(adir / "pool.tmp", adir / "pool")
    st = Stage(f"train {arm}", (adir / "summary.json",),
               lambda: align(s.cfg.arm_config(arm, judgement_model), adir, show_progress=s.show_progress), adir)
    summary = s.step(st) or read_json(adir / "summary.json")
    s.models[arm] = summary["model"]
    s.training[arm] = summary
    # a trained model is a local folder: never sent to $CADA_BASE_URL's server as a model name
    evaluate_system(s, arm, summary["model"], "none", None, backend="local")
    release_models()  # one trained model in memory at a time (GPU memory for the next arm's training)


def utility(s: StudyRun) -> dict[str, float | None]:
    """Mean log-likelihood of GSM8K reference answers, per model (``eval/<system>/loglik.json``)."""
    from cada.data.benchmarks import load_benchmark
    from cada.evaluate.utility import reference_loglik
    from cada.models.load import load_model, release_models

    def path(key: str) -> Path:
        return s.out / "eval" / ("base-loglik" if key == "base" else key) / "loglik.json"

    def work() -> dict:
        res: dict[str, float | None] = {}
        n = s.cfg.eval.loglik_n
        items = load_benchmark("gsm8k")[:n] if n else []
        for key, model in s.models.items():
            if path(key).exists():
                res[key] = read_json(path(key))["mean"]
                continue
            if not items or (key == "base" and s.cfg.base_url):
                res[key] = None
                continue
            m, tok = load_model(model)
            vals = reference_loglik(m, tok, [it.prompt for it in items], [it.reference for it in items])
            del m, tok
            release_models()
            res[key] = round(sum(vals) / len(vals), 4)
            write_json(path(key), {"model": model, "n": len(vals), "mean": res[key]})
        return res

    # done when every model that gets a figure has one: then the figures are read back, not computed
    n, by_url = s.cfg.eval.loglik_n, s.cfg.base_url
    st = Stage("utility", tuple(path(k) for k in s.models if n and not (k == "base" and by_url)), work)
    return s.step(st) or work()
