"""One arm of the paper end to end into a run folder, as a list of stages read in order:

    pool           pool/                    train and held-back prompts (pipeline.pools)
    per round i:
    self-generation round-i/records.jsonl  offline arms: N judged chains per prompt, grounded in the arm's mode
    judgement       round-i/judgement/      staged arm: SFT on the decision line alone (unless a study shares one)
    warm-up         round-i/warmup/         staged arm, round 1: SFT on grounded refusals and own benign answers
    training set    round-i/pairs.jsonl     DPO pairs, the SFT arm's set (sft.jsonl), or the RL arm's prompts
                                            with the spec they are sampled from (rl.jsonl) (datasets)
    training        round-i/train/          RL, DPO or SFT with TRL (train; the RL arm samples its own chains here)
    calibration     calibration/            staged arm, optional: decision lines, then whole rows, on fresh prompts

``summary.json`` is written once the last stage is done. Arms: :data:`cada.config.ARMS`.
"""

from __future__ import annotations

import time
from pathlib import Path

from cada.config import ARMS, AlignConfig, SelfGenConfig, check_layout, stage
from cada.errors import CadaError
from cada.pipeline.pools import judgement_prompts, prepare_pools
from cada.pipeline.stages import Ledger, Stage, StageLog, check_server, run_stage, training_outputs
from cada.records import read_json, read_records, write_json, write_records


class ArmRun:
    """The state one arm's stages share: its config, folder, spec, ledger, log, and the generator of the policy
    being sampled (made when a stage first needs it, dropped before training)."""

    def __init__(self, cfg: AlignConfig, run: Path, spec, log: StageLog, show_progress: bool):
        self.cfg, self.run, self.spec, self.log, self.show_progress = cfg, run, spec, log, show_progress
        self.arm = ARMS[cfg.arm]
        self.ledger = Ledger.load(run)
        # a folder an earlier version wrote has no ledger: its summary.json keeps what its stages measured
        self.earlier = {} if self.ledger.path.exists() or not (run / "summary.json").exists() else read_json(
            run / "summary.json")
        self._gen = None

    def generator(self, policy: str, rnd: int):
        from cada.models.generate import make_generator

        if self._gen is None:
            # later rounds generate with the policy just trained here: a local folder, whatever $CADA_BASE_URL says
            first = rnd == 1 and policy == self.cfg.model
            self._gen = make_generator(policy, base_url=self.cfg.base_url if first else None,
                                       backend="auto" if first else "local",
                                       batch_size=self.cfg.generation.batch_size, show_progress=self.show_progress)
        return self._gen

    def drop_generator(self) -> None:
        self._gen = None  # its model need not sit in memory while training

    def train(self, start: str, data, folder: Path, section, method: str = "sft", reward_funcs=None) -> dict:
        from cada.train import train

        self.drop_generator()
        train(start, data, folder, stage(section, method, self.cfg.seed), reward_funcs=reward_funcs)
        return {}

    def step(self, st: Stage) -> bool:
        return run_stage(st, self.ledger, self.log)


def selfgen_stage(r: ArmRun, rnd: int, policy: str, prompts: list) -> Stage:
    from cada.selfgen import self_generate, summarize

    rdir = r.run / f"round-{rnd}"
    g = r.cfg.generation

    def work() -> dict:
        records = self_generate(prompts, r.generator(policy, rnd), r.spec, rdir / "records.jsonl",
                                SelfGenConfig(**g.model_dump(), mode=r.arm.mode, seed=r.cfg.seed + 1000 * rnd),
                                show_progress=r.show_progress)
        write_json(rdir / "selfgen.json", summarize(records))
        return {}

    return Stage(f"round {rnd}: self-generation", (rdir / "selfgen.json",), work, rdir / "records.jsonl",
                 f"round {rnd}: self-generation, {len(prompts)} prompts x {g.n} chains ({r.arm.mode})")


def judgement_stage(cfg: AlignConfig, prompts: list, policy: str, out: Path, log: StageLog, *,
                    name: str = "judgement stage", lead: str = "judgement stage:", section=None) -> Stage:
    """SFT ``policy`` on the judgement line of ``prompts`` into ``out/model`` (a study runs it once for its arms),
    encoded at the judgement stage's length and trained with ``section`` (default: ``judgement_train``); ``lead``
    opens the log line that names how many lines it trains on."""
    from cada.datasets import encode_judgement, judgement_set
    from cada.train import train

    def work() -> dict:
        rows = judgement_set(prompts)
        encoded, kept = encode_judgement(rows, policy, cfg.judgement_train.max_length)
        write_records(out / "judgement.jsonl", kept)  # readable; training takes the encoded form
        log(f"{lead} SFT on {len(kept)} decision lines -> {out}")
        train(policy, encoded, out, stage(section or cfg.judgement_train, "sft", cfg.seed))
        return {"judgement_dropped_too_long": len(rows) - len(kept)}

    return Stage(name, training_outputs(out), work, out, announce=False)


def warmup_stage(r: ArmRun, policy: str, prompts: list) -> Stage:
    """The DPO arms' warm-up, round 1: the policy's own answers to benign warm-up prompts beyond the
    self-generation pool, the warm-up rows, the judgement stage (unless a study shares one), then SFT."""
    from cada.datasets import fit_length, warmup_set
    from cada.selfgen import direct_answers

    cfg, rdir = r.cfg, r.run / "round-1"
    own_judgement = cfg.judgement and not cfg.judgement_model

    def work() -> dict:
        info: dict = {}
        wprompts, answers = prompts, {}
        records = read_records(rdir / "records.jsonl")
        if cfg.warmup_per_label:
            from cada.data.pools import read_pool

            wprompts = read_pool(r.run / "pool" / "warmup.jsonl")
            have = {x["id"] for x in records}
            need = [p for p in wprompts if p.label == "benign" and p.id not in have]
            path = rdir / "answers.jsonl"
            r.log(f"round 1: the policy's answers to {len(need)} more benign warm-up prompts -> {path}",
                  done=r.log.active and answered(path, need))
            t = time.perf_counter()
            answers = direct_answers(need, r.generator(policy, 1), path, cfg.generation.max_new_tokens,
                                     show_progress=r.show_progress)
            info["answer_seconds"] = round(time.perf_counter() - t, 1)
        r.drop_generator()  # generation is done for this round
        rows, info["warmup_dropped_too_long"] = fit_length(
            warmup_set(wprompts, records, r.spec, r.arm.mode, answers), policy, cfg.warmup_train.max_length)
        write_records(rdir / "warmup.jsonl", rows)
        warm_from = policy
        if own_judgement:
            r.step(judgement_stage(cfg, judgement_prompts(cfg, r.run), policy, rdir / "judgement", r.log))
            warm_from = str(rdir / "judgement" / "model")
        elif cfg.judgement:
            warm_from = cfg.judgement_model
        r.log(f"round 1: warm-up SFT on {len(rows)} rows -> {rdir / 'warmup'}")
        r.train(warm_from, rdir / "warmup.jsonl", rdir / "warmup", cfg.warmup_train)
        return info

    return Stage("round 1: warm-up", training_outputs(rdir / "warmup"), work, rdir / "warmup",
                 f"round 1: {'judgement stage and ' if own_judgement else ''}warm-up", announce=False)


def answered(path: Path, prompts: list) -> bool:
    """Whether ``path`` already holds an answer for every prompt (what :func:`direct_answers` would skip)."""
    have = {x.get("id") for x in read_records(path)}
    return all(p.id in have for p in prompts)


DATA_FILES = {"rl": "rl.jsonl", "dpo": "pairs.jsonl", "sft": "sft.jsonl"}


def rl_prompts(cfg: AlignConfig, prompts: list) -> list:
    """The pool prompts the RL arm samples on: the harmful ones (the paper's), or all of them (``rl.prompts``
    mixed)."""
    return prompts if cfg.rl.prompts == "mixed" else [p for p in prompts if p.label == "harmful"]


def dataset_stage(r: ArmRun, rnd: int, policy: str, prompts: list) -> Stage:
    """The round's training set: DPO pairs or the SFT arm's set from its records, or the RL arm's prompts with
    the spec they are sampled from; its counts in dataset.json. Quiet: it takes seconds, and the training
    stage's line names its size."""
    from cada.datasets import dpo_cr_pairs, dpo_pairs, fit_length, rl_set, sft_set

    rdir = r.run / f"round-{rnd}"
    path = rdir / DATA_FILES[r.arm.method]

    def work() -> dict:
        if r.arm.online:
            chosen = rl_prompts(r.cfg, prompts)
            rows = rl_set(chosen, r.spec, placement=r.arm.placement, k=r.cfg.rl.k or None, hint=r.cfg.rl.hint)
            stats = {"prompts": len(rows), **{lab: sum(p.label == lab for p in chosen) for lab in ("harmful",
                                                                                                  "benign")}}
        else:
            records = read_records(rdir / "records.jsonl")
            if r.arm.staged:
                rows, stats = dpo_pairs(records, r.spec, precedent_fallback=r.cfg.precedent_fallback,
                                        consistency=r.cfg.consistency)
            elif r.arm.method == "dpo":
                rows, stats = dpo_cr_pairs(records, r.spec)
            else:
                rows, stats = sft_set(records, r.spec, r.arm.data)
            rows, stats["dropped_too_long"] = fit_length(rows, policy, r.cfg.train.max_length)
        write_records(path, rows)
        write_json(rdir / "dataset.json", stats)
        return {}

    return Stage(f"round {rnd}: training set", (path, rdir / "dataset.json"), work, path, quiet=True)


def rl_section(cfg: AlignConfig):
    """``rl_train`` with the generation section's sampling settings for TRL's sampler, unless its ``extra``
    names its own."""
    g = cfg.generation
    extra = {"temperature": g.temperature, "top_p": g.top_p, **cfg.rl_train.extra}
    return cfg.rl_train.model_copy(update={"extra": extra})


def training_stage(r: ArmRun, rnd: int, start: str) -> Stage:
    rdir = r.run / f"round-{rnd}"
    data = rdir / DATA_FILES[r.arm.method]
    n = len(read_records(data))
    if r.arm.online:
        from cada.judges.reward import rl_reward

        t = r.cfg.rl_train
        what = (f"RL on {n} prompts x {t.num_generations} samples ({r.arm.placement}, reward "
                f"{r.cfg.rl.reward}, {t.baseline} baseline)")
        work = lambda: r.train(start, data, rdir / "train", rl_section(r.cfg), "rl",  # noqa: E731
                               reward_funcs=[rl_reward(r.cfg.rl)])
    else:
        what = f"{r.arm.method.upper()} on {n} {'pairs' if r.arm.method == 'dpo' else 'rows'}"
        work = lambda: r.train(start, data, rdir / "train", r.cfg.train, r.arm.method)  # noqa: E731
    return Stage(f"round {rnd}: training", training_outputs(rdir / "train"), work, rdir / "train",
                 f"round {rnd}: {what}")


def calibration_stage(r: ArmRun, policy: str) -> Stage:
    """The last pass from ``policy``: the judgement line of every calibration prompt (``calibration/judgement``),
    then whole warm-up rows -- the benign prompts with the base model's own answer and the first half of the
    harmful ones -- into ``calibration/model``."""
    from cada.data.pools import read_pool
    from cada.datasets import fit_length, warmup_set
    from cada.selfgen import direct_answers

    out, c = r.run / "calibration", r.cfg.calibration_train

    def work() -> dict:
        from cada.models.generate import make_generator

        path = r.run / "pool" / "calibration.jsonl"
        prompts = read_pool(path)
        if not prompts:
            raise CadaError(f"{path}: no prompt for the calibration pass (the pool is too small); lower "
                            "calibration_per_label or turn it off")
        # the judgement lines at the judgement stage's length: a long jailbreak-wrapped prompt trained on the line
        # alone learns to stop after it; the whole rows below, up to c.max_length, teach the answer
        r.step(judgement_stage(r.cfg, prompts, policy, out / "judgement", r.log,
                               name="calibration pass, decision lines", lead="calibration pass:", section=c))
        benign = [p for p in prompts if p.label == "benign"]
        r.log(f"calibration pass: the base model's answers to {len(benign)} benign prompts -> "
              f"{out / 'answers.jsonl'}", done=r.log.active and answered(out / "answers.jsonl", benign))
        t = time.perf_counter()
        # the benign answers are the base model's own, as in the warm-up
        gen = make_generator(r.cfg.model, base_url=r.cfg.base_url, batch_size=r.cfg.generation.batch_size,
                             show_progress=r.show_progress)
        answers = direct_answers(benign, gen, out / "answers.jsonl", r.cfg.generation.max_new_tokens,
                                 show_progress=r.show_progress)
        seconds = round(time.perf_counter() - t, 1)
        del gen  # the base model is not needed while training
        harmful = [p for p in prompts if p.label == "harmful"]
        rows, _ = fit_length(warmup_set(benign + harmful[:len(harmful) // 2], [], r.spec, r.arm.mode, answers),
                             policy, c.max_length)
        write_records(out / "warmup.jsonl", rows)
        r.log(f"calibration pass: SFT on {len(rows)} whole rows -> {out / 'model'}")
        r.train(str(out / "judgement" / "model"), out / "warmup.jsonl", out, c)
        return {"answer_seconds": seconds}

    return Stage("calibration pass", training_outputs(out), work, out / "model", announce=False)


def check(cfg: AlignConfig, run: Path) -> None:
    """Mistakes that would otherwise surface only after the first stages: no stage has run when this raises."""
    from cada.models.load import resolve_trainable

    if cfg.calibration_per_label and not ARMS[cfg.arm].staged:
        raise CadaError(f"calibration_per_label: the calibration pass is the staged arm's; arm {cfg.arm!r} has "
                        "none (leave it unset)")
    resolve_trainable(cfg.model)  # training needs local weights: a typo fails here, before any stage runs
    if cfg.judgement_model:
        resolve_trainable(cfg.judgement_model)
    check_server(cfg.base_url)
    saved = run / "config.yaml"
    if saved.exists():
        check_layout(saved)
    if saved.exists() and (before := AlignConfig.from_yaml(saved)) != cfg:
        raise CadaError(f"{saved}: this run folder was started with another config ({before.differences(cfg)}); "
                        "use a new --output or the same settings to resume")


def align(cfg: AlignConfig, output: str | Path, *, show_progress: bool = True) -> dict:
    """Run (or resume) one arm into ``output``; returns the summary (also written to ``output/summary.json``)."""
    from cada.spec.schema import load_spec

    t_all = time.perf_counter()
    run = Path(output)
    check(cfg, run)
    spec = load_spec(cfg.spec)
    log = StageLog("cada align", show_progress)
    log(f"arm {cfg.arm}, policy {cfg.model} -> {run}")
    if unused := cfg.unused_settings():
        log(f"note: arm {cfg.arm} with these settings does not use {', '.join(unused)}")
    train_prompts, held_prompts, pool_report = prepare_pools(cfg, run, spec)
    # saved once the pools load: a bad pool file must not pin the folder to the config that named it
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    log(f"pools: {len(train_prompts)} self-generation prompts, {len(held_prompts)} held back -> {run / 'pool'}")
    r = ArmRun(cfg, run, spec, log, show_progress)
    before = read_json(run / "summary.json") if (run / "summary.json").exists() else {}
    policy, rounds = cfg.model, []
    for rnd in range(1, cfg.rounds + 1):
        rounds.append(run_round(r, rnd, policy, train_prompts))
        policy = str(run / f"round-{rnd}" / "train" / "model")
    summary: dict = {"arm": cfg.arm, "base_model": cfg.model,
                     "pool": {k: pool_report.get(k) for k in ("train", "heldout", "removed_for_eval_overlap")},
                     "rounds": rounds}
    if cfg.calibration_per_label:
        r.step(calibration_stage(r, policy))
        summary["calibration"] = calibration_info(r)
        policy = str(run / "calibration" / "model")
    summary["model"] = policy
    # the wall time of every invocation that reached this line, resumed ones included
    summary["seconds"] = round(before.get("seconds", 0.0) + time.perf_counter() - t_all, 1)
    write_json(run / "summary.json", summary)
    log(f"finished: the model is {policy}; summary in {run / 'summary.json'}")
    return summary


def run_round(r: ArmRun, rnd: int, policy: str, prompts: list) -> dict:
    """One round's stages; returns its part of the summary."""
    rdir, cfg = r.run / f"round-{rnd}", r.cfg
    if not r.arm.online:  # the RL arm samples its own chains while it trains
        r.step(selfgen_stage(r, rnd, policy, prompts))
    start = policy
    if r.arm.staged and cfg.warmup and rnd == 1:
        r.step(warmup_stage(r, policy, prompts))
        start = str(rdir / "warmup" / "model")
    r.step(dataset_stage(r, rnd, policy, prompts))
    r.step(training_stage(r, rnd, start))
    r.drop_generator()
    return round_info(r, rnd, policy)


def _seconds(folder: Path) -> float | None:
    """A finished training stage's time, as its ``train_info.json`` recorded it."""
    path = folder / "train_info.json"
    return read_json(path)["train_seconds"] if path.exists() else None


def round_info(r: ArmRun, rnd: int, policy: str) -> dict:
    rdir, cfg = r.run / f"round-{rnd}", r.cfg
    led = r.ledger.entries
    info: dict = {"round": rnd, "policy": str(policy)}
    if not r.arm.online:
        info.update(generation_seconds=r.ledger.seconds(f"round {rnd}: self-generation"),
                    selfgen=read_json(rdir / "selfgen.json"))
    for name in ("round 1: warm-up", "judgement stage") if rnd == 1 else ():
        info.update({k: v for k, v in (led.get(name) or {}).items() if k != "seconds"})
    if (rdir / "warmup.jsonl").exists() and r.arm.staged and cfg.warmup and rnd == 1:
        info["warmup_examples"] = len(read_records(rdir / "warmup.jsonl"))
        if cfg.judgement:
            info["judgement_model"] = cfg.judgement_model or str(rdir / "judgement" / "model")
            if (rdir / "judgement" / "judgement.jsonl").exists():
                info["judgement_examples"] = len(read_records(rdir / "judgement" / "judgement.jsonl"))
    info["dataset"] = read_json(rdir / "dataset.json")
    for key, folder in (("judgement_seconds", "judgement"), ("warmup_seconds", "warmup"), ("train_seconds", "train")):
        if (s := _seconds(rdir / folder)) is not None:
            info[key] = s
    earlier = next((x for x in r.earlier.get("rounds", []) if x.get("round") == rnd), {})
    info.update({k: earlier[k] for k in LEDGER_KEYS if k in earlier})
    return {k: v for k, v in info.items() if v is not None}


#: what a round's summary takes from the ledger: for a folder an earlier version wrote, from its summary instead
LEDGER_KEYS = ("generation_seconds", "answer_seconds", "warmup_dropped_too_long", "judgement_dropped_too_long")


def calibration_info(r: ArmRun) -> dict:
    out = r.run / "calibration"
    info = {k: v for k, v in (r.ledger.entries.get("calibration pass") or {}).items() if k != "seconds"}
    if "answer_seconds" in r.earlier.get("calibration", {}):
        info["answer_seconds"] = r.earlier["calibration"]["answer_seconds"]
    for name, path in (("judgement", out / "judgement" / "judgement.jsonl"), ("warmup", out / "warmup.jsonl")):
        rows = read_records(path)
        info[f"{name}_rows"] = {lab: sum(x["label"] == lab for x in rows) for lab in ("benign", "harmful")}
    for key, folder in (("judgement_seconds", out / "judgement"), ("warmup_seconds", out)):
        if (s := _seconds(folder)) is not None:
            info[key] = s
    return info
