"""One arm of the paper end to end into a run folder: pools -> self-generation -> training sets -> training.

Arms: ``cada`` (case-grounded chains, DPO), ``da`` (rules-only deliberative alignment: code-grounded chains, DPO),
``sft-dr`` (direct refusals), ``sft-sc`` (code-grounded chains, SFT), ``sft-cr`` (case-grounded chains, SFT).

The run folder holds ``config.yaml``, ``pool/`` (train and held-back prompts, overlap report), ``round-<i>/``
(``records.jsonl``, ``pairs.jsonl`` or ``sft.jsonl``, ``warmup.jsonl``, ``train/`` with the model and logs) and
``summary.json``. Every stage skips what is already complete, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cada.errors import CadaError
from cada.records import read_json, read_records, write_json, write_records

log = logging.getLogger(__name__)

ARMS = {  # arm -> (self-generation mode, training method, SFT set)
    "cada": ("cases", "dpo", None),
    "da": ("codes", "dpo", None),
    "sft-dr": ("none", "sft", "dr"),
    "sft-sc": ("codes", "sft", "sc"),
    "sft-cr": ("cases", "sft", "cr"),
}


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def _check_source(cls, data, path) -> None:
        """A hook for a one-line error before validation (e.g. a config of the wrong kind)."""

    def differences(self, other: "_Cfg", most: int = 3) -> str:
        """The settings where ``other`` differs from this config, as ``field: old -> new`` (dotted paths; the
        first ``most``, then how many more), for an error that says what changed."""
        def flat(d, prefix=""):
            for k, v in d.items():
                if isinstance(v, dict):
                    yield from flat(v, f"{prefix}{k}.")
                else:
                    yield f"{prefix}{k}", v

        def short(v) -> str:
            text = repr(v)
            return text if len(text) <= 60 else text[:57] + "..."

        mine, theirs = dict(flat(self.model_dump(mode="json"))), dict(flat(other.model_dump(mode="json")))
        diff = [f"{k}: {short(mine.get(k))} -> {short(theirs.get(k))}" for k in {**mine, **theirs}
                if mine.get(k) != theirs.get(k)]
        return "; ".join(diff[:most]) + (f" (+{len(diff) - most} more)" if len(diff) > most else "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "_Cfg":
        from pydantic import ValidationError

        from cada.errors import read_yaml_file, validation_message

        data = read_yaml_file(path)
        cls._check_source(data, path)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise CadaError(validation_message(e, path)) from None


class PoolConfig(_Cfg):
    user_pool: str | None = None          # CSV/JSON/JSONL with prompt,label[,category]; default: the shipped pools
    limit_per_label: int | None = Field(None, ge=1)  # cap harmful and benign training prompts (CPU-sized runs)
    heldout_per_label: int = Field(50, ge=0)
    jailbreak_share: float = Field(0.25, ge=0, le=1)  # shipped pools only: a user_pool is used as given


class GenConfig(_Cfg):
    n: int = Field(4, ge=1)
    k: int = Field(6, ge=0)
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(192, ge=1)
    batch_size: int = Field(16, ge=1)


class TrainCfg(_Cfg):
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    beta: float = Field(0.1, ge=0)
    sft_weight: float = Field(0.0, ge=0)  # DPO: weight of an NLL term on the chosen side (RPO; see TrainConfig)
    lora_r: int = Field(16, ge=0)         # 0 = full fine-tuning
    top_layers: int = Field(0, ge=0)      # with lora_r 0: train only the top N decoder layers (0 = all)
    max_length: int = Field(768, ge=1)
    bf16: bool | None = None              # bf16 autocast; None = where the GPU or CPU computes in bf16 (TrainConfig)
    # an arm's stages train on from each other and every command takes the result as --model, so they keep
    # merged models (the LoRA adapter is saved beside them); adapter-only output is `cada train --no-merge`
    merge: bool = True

    @field_validator("merge")
    @classmethod
    def _merged(cls, v: bool) -> bool:
        if not v:
            raise ValueError("an arm keeps merged models (its adapter is saved beside); for an adapter alone use "
                             "`cada train --no-merge`")
        return v


class AlignConfig(_Cfg):
    """Everything one arm's run depends on; saved as ``config.yaml`` in the run folder."""

    arm: Literal["cada", "da", "sft-dr", "sft-sc", "sft-cr"] = "cada"
    model: str = "smollm2-135m"
    spec: str | None = None
    base_url: str | None = None           # generate through an OpenAI-compatible server instead of locally
    seed: int = 0
    rounds: int = Field(1, ge=1)
    warmup: bool = True                   # SFT warm-up on precedent-grounded chains before DPO
    # prompts per label for the warm-up: every self-generation prompt, then more from the whole training pool up to
    # this many (so it is a floor: without pool.limit_per_label the self-generation pool is the whole pool; None:
    # the self-generation prompts alone);
    # harmful ones cost nothing (precedent-grounded refusals), benign ones one direct answer from the policy
    warmup_per_label: int | None = Field(None, ge=1)
    # before the warm-up, SFT on the judgement alone ("This request is harmful." / "... benign."): in a warm-up
    # example the decision is one token among a hundred, and a small policy learns it far better on its own
    # (docs/training.md: held-back AUC 0.87 -> 0.99 on the embedded model). Prompts per label from the whole
    # training pool, always including the warm-up prompts (so at least warmup_per_label; None: the warm-up
    # prompts); each costs one short training example, no generation.
    judgement: bool = True
    judgement_per_label: int | None = Field(None, ge=1)
    judgement_model: str | None = None    # a finished judgement stage to start the warm-up from (a study shares one)
    precedent_fallback: bool = True
    # DPO twins whose rejected side keeps the chosen analysis and swaps in the wrong answer, so the answer learns to
    # follow the decision (pairs.dpo_pairs; docs/training.md: the benign refusals left after the warm-up were
    # answers that contradict a "benign" analysis)
    consistency: bool = False
    # a last pass on fresh pool prompts, more benign than harmful, after DPO: their judgement lines (as in the
    # judgement stage), then whole warm-up rows (judgement, grounded analysis, refusal or the base model's own answer),
    # one epoch each at a low learning rate. Moves the line towards "benign" on look-alikes; the whole rows, long
    # enough for jailbreak-wrapped prompts, keep the answer going after the judgement line (docs/training.md).
    # Benign prompts; half as many harmful ones (half of those also give whole rows), set aside before any other
    # stage draws its prompts. DPO arms only.
    calibration_per_label: int | None = Field(None, ge=2)  # N benign and N // 2 harmful prompts
    pool: PoolConfig = PoolConfig()
    generation: GenConfig = GenConfig()
    train: TrainCfg = TrainCfg()
    warmup_train: TrainCfg = TrainCfg(epochs=1.0)
    judgement_train: TrainCfg = TrainCfg(learning_rate=5e-5, epochs=2.0, lora_r=0, max_length=320)
    calibration_train: TrainCfg = TrainCfg(learning_rate=1e-5, epochs=1.0, lora_r=0, max_length=1024)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def unused_settings(self) -> list[str]:
        """Settings given a value that this arm's stages never read (a shared config file run with another
        ``--arm``, or a stage switched off while its sizes are set); ``align`` says so rather than fail."""
        dpo = ARMS[self.arm][1] == "dpo"
        out = []
        if not dpo:  # the SFT arms train once on their own set: none of the DPO arms' extra stages run
            out += [k for k in ("warmup", "judgement", "consistency", "warmup_per_label", "judgement_per_label",
                                "judgement_model") if getattr(self, k)]
        else:
            if not self.warmup:  # the judgement stage runs before the warm-up, so it goes with it
                out += [k for k in ("warmup_per_label", "judgement", "judgement_per_label", "judgement_model")
                        if getattr(self, k)]
            elif not self.judgement:
                out += [k for k in ("judgement_per_label", "judgement_model") if getattr(self, k)]
        return out

    @classmethod
    def _check_source(cls, data, path) -> None:
        if isinstance(data, dict) and ("arms" in data or "base_modes" in data):
            raise CadaError(f"{path}: a study's config (it lists arms), not one arm's: run it with "
                            f"`cada study --config {path}`")


def prepare_pools(cfg: AlignConfig, run: Path, spec) -> tuple[list, list, dict]:
    """Train and held-back prompts (written once to ``run/pool``, reused on resume)."""
    from cada.data import pools as P
    from cada.data.overlap import fingerprint

    pool_dir = run / "pool"
    train_path, held_path, report_path = pool_dir / "train.jsonl", pool_dir / "heldout.jsonl", pool_dir / "report.json"
    if train_path.exists() and held_path.exists() and report_path.exists():
        return P.read_pool(train_path), P.read_pool(held_path), read_json(report_path)
    if cfg.pool.user_pool:
        # a user's pool gets the shipped pools' check: no evaluation prompt (or a reworded one) trains
        prompts, removed = P.drop_eval_overlap(P.load_user_pool(cfg.pool.user_pool, spec=spec))
        report: dict = {"source": cfg.pool.user_pool}
    else:
        pools = P.build_pools(jailbreak_share=cfg.pool.jailbreak_share, seed=cfg.seed, spec=spec)
        prompts, removed = pools.prompts, pools.removed
        report = {"counts": pools.counts}
    report.update(removed_for_eval_overlap=len(removed),
                  removed=[{**r, "matched": fingerprint(r["matched"])} for r in removed[:50]])
    train, held = P.split_heldout(prompts, n_heldout_per_label=cfg.pool.heldout_per_label, seed=cfg.seed)
    # a training prompt that near-duplicates a held-back one would leak it (the pools have reworded repeats)
    train, near = P.drop_near_heldout(train, held)
    report["train_near_heldout_dropped"] = near
    for label in ("harmful", "benign"):
        n_all = sum(p.label == label for p in prompts)
        if n_all and not any(p.label == label for p in train):
            raise CadaError(f"pool.heldout_per_label {cfg.pool.heldout_per_label}: it holds back all {n_all} "
                            f"{label} prompts of the pool (or their near duplicates), so none is left to train on; "
                            "lower it or add prompts")
    calibration = []
    if cfg.calibration_per_label:  # set aside first, so that no other stage trains on them or on a near duplicate
        calibration = calibration_draw(train, cfg.calibration_per_label, cfg.seed + 3)
        reserved = {p.id for p in calibration}
        train, report["train_near_calibration_dropped"] = P.drop_near_heldout(
            [p for p in train if p.id not in reserved], calibration)
        for label in ("benign", "harmful"):
            if not any(p.label == label for p in calibration) or not any(p.label == label for p in train):
                raise CadaError(f"calibration_per_label {cfg.calibration_per_label}: the pool has too few {label} "
                                "prompts to set some aside for the calibration pass and train on the rest; lower it")
    everything = train
    if cfg.pool.limit_per_label:
        train = _balanced(train, cfg.pool.limit_per_label, cfg.seed)
    pool_dir.mkdir(parents=True, exist_ok=True)
    warm = train
    if cfg.warmup_per_label:
        # the self-generation prompts first (their own answers are reused), then more of the same pool
        warm = _extend(train, everything, cfg.warmup_per_label, cfg.seed + 1)
        P.write_jsonl(pool_dir / "warmup.jsonl", warm)
    if cfg.judgement_per_label:
        P.write_jsonl(pool_dir / "judgement.jsonl", _extend(warm, everything, cfg.judgement_per_label, cfg.seed + 2))
    if cfg.calibration_per_label:
        P.write_jsonl(pool_dir / "calibration.jsonl", calibration)
    P.write_jsonl(train_path, train)
    P.write_jsonl(held_path, held)
    report.update(train=len(train), heldout=len(held))
    write_json(report_path, report)
    return train, held, report


def calibration_draw(prompts: list, n_benign: int, seed: int) -> list:
    """``n_benign`` benign and ``n_benign // 2`` harmful prompts for the calibration pass, drawn at random (fewer
    when the pool runs out); they are set aside before the other stages draw theirs."""
    import random

    rng = random.Random(seed)
    out = []
    for label, n in (("benign", n_benign), ("harmful", n_benign // 2)):
        xs = [p for p in prompts if p.label == label]
        rng.shuffle(xs)
        out += xs[:n]
    return out


def _extend(own: list, everything: list, per_label: int, seed: int) -> list:
    """``own`` prompts first, then more of ``everything`` drawn at random, up to ``per_label`` per label."""
    ids = {p.id for p in own}
    more = _balanced([p for p in everything if p.id not in ids], per_label, seed)
    out = []
    for label in ("harmful", "benign"):
        mine = [q for q in own if q.label == label]
        out += (mine + [q for q in more if q.label == label])[:max(per_label, len(mine))]
    return out


def _balanced(prompts: list, per_label: int, seed: int) -> list:
    import random

    rng = random.Random(seed)
    out = []
    for label in ("harmful", "benign"):
        xs = [p for p in prompts if p.label == label]
        rng.shuffle(xs)
        out += xs[:per_label]
    return out


def warmup_set(prompts: list, records: list[dict], spec, mode: str = "cases",
               answers: dict[str, str] | None = None) -> list[dict]:
    """SFT warm-up rows that teach the answer format and grounded reasoning before DPO (context-distilled):
    harmful -> a refusal grounded in the nearest precedent (``cases``) or the covering rule (``codes``);
    benign -> the model's own best complying answer (from ``records``, else from ``answers``: its direct answer
    to the bare request), with an analysis grounded the same way. Benign prompts without an answer are skipped."""
    from cada.judges.refusal import string_match_label
    from cada.pairs import chain, sft_row, writer_for

    writer = writer_for(mode, spec)
    best: dict[str, str] = {}
    for r in records:
        if r["label"] == "benign" and r["judge"] == "comply" and len(r["response"]) > len(best.get(r["id"], "")):
            best[r["id"]] = r["response"]
    for pid, text in (answers or {}).items():
        if pid not in best and text.strip() and string_match_label(text) == "comply":
            best[pid] = text
    rows = []
    for p in prompts:
        if p.label == "harmful":
            text = writer.refusal(p.prompt, p.category)
        elif p.id in best:
            text = chain(writer.analysis(p.prompt, "comply", p.category), best[p.id])
        else:
            continue
        rows.append(sft_row(p.id, p.label, p.category, p.prompt, text))
    return rows


def direct_answers(prompts: list, gen, path: Path, max_new_tokens: int, *, show_progress: bool = True
                   ) -> dict[str, str]:
    """The policy's own greedy answers to bare benign requests (resumable JSONL ``{"id", "response"}``)."""
    from cada.models.generate import SamplingParams
    from cada.records import append_records, chunks

    done = {r["id"]: r["response"] for r in read_records(path, repair=True)} if path.exists() else {}
    todo = [p for p in prompts if p.id not in done]
    if hasattr(gen, "show_progress"):
        gen.show_progress = show_progress
    for chunk in chunks(todo, 64):
        outs = gen.generate([[{"role": "user", "content": p.prompt}] for p in chunk],
                            SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
        rows = [{"id": p.id, "response": o[0]} for p, o in zip(chunk, outs)]
        append_records(path, rows)
        done.update((r["id"], r["response"]) for r in rows)
    return done


def judgement_set(prompts: list) -> list[dict]:
    """SFT rows that teach the decision alone: the bare request -> the first line of the warm-up's analysis
    (``This request is harmful.``, ``... benign.``, or the self-harm line), context-distilled."""
    from cada.pairs import LEAD, sft_row
    from cada.reasoning import ANALYSIS_HEADER

    def lead(p) -> str:
        if p.label == "benign":
            return LEAD["comply"]
        return LEAD["safe_complete" if p.category == "suicide_self_harm" else "refuse"]

    return [sft_row(p.id, p.label, p.category, p.prompt, f"{ANALYSIS_HEADER}\n{lead(p)}") for p in prompts]


def fit_length(rows: list[dict], model: str, max_length: int) -> tuple[list[dict], int]:
    """Drop examples longer than ``max_length`` tokens (truncation would cut the answer that carries the signal)."""
    from transformers import AutoTokenizer

    from cada.models.load import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))

    def n_tokens(r: dict) -> int:
        if "messages" in r:
            convs = [r["messages"]]
        else:
            convs = [[*r["prompt"], *r[k]] for k in ("completion", "chosen", "rejected") if k in r]
        return max(len(tok(tok.apply_chat_template(c, tokenize=False)).input_ids) for c in convs)

    kept = [r for r in rows if n_tokens(r) <= max_length]
    return kept, len(rows) - len(kept)


def judgement_prompts(cfg: AlignConfig, run: Path) -> list:
    """The judgement stage's prompts: ``pool/judgement.jsonl`` with ``judgement_per_label``, else the warm-up's."""
    from cada.data.pools import read_pool

    name = "judgement" if cfg.judgement_per_label else "warmup" if cfg.warmup_per_label else "train"
    return read_pool(run / "pool" / f"{name}.jsonl")


def encode_judgement(rows: list[dict], model: str, max_length: int) -> tuple[list[dict], list[dict]]:
    """Judgement rows as token ids with the loss on the judgement line only, and **no end of turn** after it: a
    prompt/completion row would teach the policy to stop after "This request is harmful.", and a warm-up smaller
    than the judgement stage does not unlearn that. Returns the encoded rows and the rows kept (those longer than
    ``max_length`` are dropped)."""
    from transformers import AutoTokenizer

    from cada.models.load import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    encoded, kept = [], []
    for r in rows:
        prompt = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(r["completion"][0]["content"], add_special_tokens=False)["input_ids"]
        if len(p_ids) + len(c_ids) <= max_length:
            encoded.append({"input_ids": p_ids + c_ids, "labels": [-100] * len(p_ids) + c_ids})
            kept.append(r)
    return encoded, kept


def train_calibration(cfg: AlignConfig, run: Path, policy: str, spec, mode: str, *, show_progress: bool = True,
                      log: StageLog | None = None) -> tuple[str, dict]:
    """The last pass (``calibration_per_label``) from ``policy``, resumable: the judgement line of every
    calibration prompt (``run/calibration/judgement``), then whole warm-up rows -- the benign prompts with the base
    model's own answer and the first half of the harmful ones -- into ``run/calibration/model``."""
    from cada.data.pools import read_pool
    from cada.models.generate import make_generator
    from cada.train import finished, train

    out = run / "calibration"
    model_dir, jdir = out / "model", out / "judgement"
    c = cfg.calibration_train
    info: dict = {}
    log = log or StageLog(False)
    if finished(out):
        log(f"calibration pass -> {model_dir}", done=True)
    else:
        prompts = read_pool(run / "pool" / "calibration.jsonl")
        if not prompts:
            raise CadaError(f"{run / 'pool' / 'calibration.jsonl'}: no prompt for the calibration pass (the pool "
                            "is too small); lower calibration_per_label or turn it off")
        if finished(jdir):
            log(f"calibration pass, decision lines -> {jdir}", done=True)
        else:
            # the judgement lines at the judgement stage's length: a long jailbreak-wrapped prompt trained on the
            # line alone learns to stop after it; the whole rows below, up to c.max_length, teach the answer
            encoded, kept = encode_judgement(judgement_set(prompts), policy, cfg.judgement_train.max_length)
            write_records(jdir / "judgement.jsonl", kept)  # readable; training takes the encoded form
            log(f"calibration pass: SFT on {len(kept)} decision lines -> {jdir}")
            train(policy, encoded, jdir, _sft_config(c, cfg.seed))
        t = time.perf_counter()
        benign = [p for p in prompts if p.label == "benign"]
        log(f"calibration pass: the base model's answers to {len(benign)} benign prompts -> {out / 'answers.jsonl'}",
            done=log.active and _answered(out / "answers.jsonl", benign))
        # the benign answers are the base model's own, as in the warm-up
        gen = make_generator(cfg.model, base_url=cfg.base_url, batch_size=cfg.generation.batch_size,
                             show_progress=show_progress)
        answers = direct_answers(benign, gen, out / "answers.jsonl",
                                 cfg.generation.max_new_tokens, show_progress=show_progress)
        info["answer_seconds"] = round(time.perf_counter() - t, 1)
        del gen  # the base model is not needed while training
        harmful = [p for p in prompts if p.label == "harmful"]
        whole = benign + harmful[:len(harmful) // 2]
        rows, _ = fit_length(warmup_set(whole, [], spec, mode, answers), policy, c.max_length)
        write_records(out / "warmup.jsonl", rows)
        log(f"calibration pass: SFT on {len(rows)} whole rows -> {model_dir}")
        train(str(jdir / "model"), out / "warmup.jsonl", out, _sft_config(c, cfg.seed))
    for name, path in (("judgement", jdir / "judgement.jsonl"), ("warmup", out / "warmup.jsonl")):
        rows = read_records(path)
        info[f"{name}_rows"] = {lab: sum(r["label"] == lab for r in rows) for lab in ("benign", "harmful")}
    _trained_seconds(info, judgement_seconds=jdir, warmup_seconds=out)
    return str(model_dir), info


class StageLog:
    """One line per stage on stderr: what runs, on how much, into which folder, and the minutes since the run
    started. The progress bars only count, so without these a long run's log does not say which stage it is in; a
    stage a resumed run finds finished says so, as a study's stages do. Silent when ``show`` is false."""

    def __init__(self, show: bool = True):
        self.console, self.t0 = None, time.perf_counter()
        if show:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    @property
    def active(self) -> bool:
        return self.console is not None

    def __call__(self, text: str, *, done: bool = False) -> None:
        if self.console is None:
            return
        from rich.markup import escape

        minutes = (time.perf_counter() - self.t0) / 60
        self.console.print(f"[bold]cada align[/] {escape(text)}{' (done, skipped)' if done else ''}"
                           f"  [dim]{minutes:.1f} min[/]", soft_wrap=True)


def _generated(path: Path, prompts: list, n: int) -> bool:
    """Whether ``path`` already holds ``n`` records for every prompt (what :func:`self_generate` would skip)."""
    from collections import Counter

    have = Counter(r.get("id") for r in read_records(path))
    return all(have[p.id] >= n for p in prompts)


def _answered(path: Path, prompts: list) -> bool:
    """Whether ``path`` already holds an answer for every prompt (what :func:`direct_answers` would skip)."""
    have = {r.get("id") for r in read_records(path)}
    return all(p.id in have for p in prompts)


def _trained_seconds(info: dict, **stages: Path) -> None:
    """Each finished training stage's time, as its ``train_info.json`` recorded it: a resumed run reports what
    the stage took when it ran, not the instant it took to find it done."""
    for key, folder in stages.items():
        path = folder / "train_info.json"
        if path.exists():
            info[key] = read_json(path)["train_seconds"]


def _carry_seconds(info: dict, before: dict) -> None:
    """Fold in the times an earlier invocation recorded in ``summary.json`` for the same stage: generation
    time adds up over invocations (a resumed generation does the rest), an answer time measured only when the
    answers were written is kept. Training times come from the stages' own files (`_trained_seconds`)."""
    for key, value in before.items():
        if key == "generation_seconds":
            info[key] = round(info.get(key, 0.0) + value, 1)
        elif key == "answer_seconds":
            info.setdefault(key, value)


def _sft_config(c: TrainCfg, seed: int):
    """The training settings of an SFT stage (judgement, warm-up, calibration): merged, so the next stage and every
    command can take the folder as ``--model``."""
    from cada.train import TrainConfig

    return TrainConfig(method="sft", learning_rate=c.learning_rate, epochs=c.epochs, batch_size=c.batch_size,
                       grad_accum=c.grad_accum, lora_r=c.lora_r, top_layers=c.top_layers, max_length=c.max_length,
                       bf16=c.bf16, merge=True, seed=seed)


def train_judgement(cfg: AlignConfig, prompts: list, policy: str, out: Path, *, log: StageLog | None = None
                    ) -> dict:
    """SFT ``policy`` on the judgement line of ``prompts`` into ``out/model`` (a finished one is reused)."""
    from cada.train import finished, train

    log = log or StageLog(False)
    info: dict = {}
    if finished(out):
        log(f"judgement stage -> {out}", done=True)
    else:
        j = cfg.judgement_train
        rows = judgement_set(prompts)
        encoded, kept = encode_judgement(rows, policy, j.max_length)
        info["judgement_dropped_too_long"] = len(rows) - len(kept)
        write_records(out / "judgement.jsonl", kept)  # readable; training takes the encoded form
        log(f"judgement stage: SFT on {len(kept)} decision lines -> {out}")
        t = time.perf_counter()
        train(policy, encoded, out, _sft_config(j, cfg.seed))
        info["judgement_seconds"] = round(time.perf_counter() - t, 1)
    info["judgement_examples"] = len(read_records(out / "judgement.jsonl"))
    return info


def align(cfg: AlignConfig, output: str | Path, *, show_progress: bool = True) -> dict:
    """Run one arm into ``output``; returns the summary (also written to ``output/summary.json``)."""
    from cada.models.generate import make_generator
    from cada.pairs import dpo_pairs, sft_set
    from cada.selfgen import SelfGenConfig, self_generate, summarize
    from cada.spec.schema import load_spec
    from cada.train import TrainConfig, finished, train

    from cada.models.load import resolve_trainable

    if cfg.calibration_per_label and ARMS[cfg.arm][1] != "dpo":
        raise CadaError(f"calibration_per_label: the calibration pass follows DPO; arm {cfg.arm!r} has none "
                        "(leave it unset)")
    resolve_trainable(cfg.model)  # training needs local weights: a typo fails here, before any stage runs
    if cfg.judgement_model:
        resolve_trainable(cfg.judgement_model)
    run = Path(output)
    saved = run / "config.yaml"
    if saved.exists() and (before := AlignConfig.from_yaml(saved)) != cfg:
        raise CadaError(f"{saved}: this run folder was started with another config ({before.differences(cfg)}); "
                        "use a new --output or the same settings to resume")
    spec = load_spec(cfg.spec)
    mode, method, sft_arm = ARMS[cfg.arm]
    log = StageLog(show_progress)
    log(f"arm {cfg.arm}, policy {cfg.model} -> {run}")
    if unused := cfg.unused_settings():
        log(f"note: arm {cfg.arm} with these settings does not use {', '.join(unused)}")
    train_prompts, held_prompts, pool_report = prepare_pools(cfg, run, spec)
    # saved once the pools load: a bad pool file must not pin the folder to the config that named it
    run.mkdir(parents=True, exist_ok=True)
    saved.write_text(cfg.to_yaml())
    log(f"pools: {len(train_prompts)} self-generation prompts, {len(held_prompts)} held back -> {run / 'pool'}")
    summary: dict = {"arm": cfg.arm, "base_model": cfg.model, "pool": {k: pool_report.get(k) for k in
                                                                      ("train", "heldout",
                                                                       "removed_for_eval_overlap")},
                     "rounds": []}
    policy = cfg.model
    before = read_json(run / "summary.json") if (run / "summary.json").exists() else {}
    rounds_before = {r.get("round"): r for r in before.get("rounds", [])}
    t_all = time.perf_counter()
    for rnd in range(1, cfg.rounds + 1):
        rdir = run / f"round-{rnd}"
        info: dict = {"round": rnd, "policy": str(policy)}
        t0 = time.perf_counter()
        # later rounds generate with the policy just trained here: a local folder, whatever $CADA_BASE_URL says
        gen = make_generator(policy, base_url=cfg.base_url if rnd == 1 else None,
                             backend="auto" if rnd == 1 else "local",
                             batch_size=cfg.generation.batch_size, show_progress=show_progress)
        g = cfg.generation
        log(f"round {rnd}: self-generation, {len(train_prompts)} prompts x {g.n} chains ({mode}) -> "
            f"{rdir / 'records.jsonl'}", done=log.active and _generated(rdir / "records.jsonl", train_prompts, g.n))
        records = self_generate(train_prompts, gen, spec, rdir / "records.jsonl",
                                SelfGenConfig(mode=mode, n=g.n, k=g.k, temperature=g.temperature, top_p=g.top_p,
                                              max_new_tokens=g.max_new_tokens, seed=cfg.seed + 1000 * rnd),
                                show_progress=show_progress)
        info["generation_seconds"] = round(time.perf_counter() - t0, 1)
        info["selfgen"] = summarize(records)
        t = cfg.train
        tcfg = TrainConfig(method=method, learning_rate=t.learning_rate, epochs=t.epochs, batch_size=t.batch_size,
                           grad_accum=t.grad_accum, beta=t.beta, sft_weight=t.sft_weight, lora_r=t.lora_r,
                           top_layers=t.top_layers, max_length=t.max_length, bf16=t.bf16, merge=t.merge,
                           seed=cfg.seed)
        start_model = policy
        if method == "dpo" and cfg.warmup and rnd == 1:
            wpath = rdir / "warmup.jsonl"
            if finished(rdir / "warmup"):
                own_judgement = cfg.judgement and not cfg.judgement_model
                log(f"round {rnd}: {'judgement stage and ' if own_judgement else ''}warm-up -> {rdir / 'warmup'}",
                    done=True)
            else:
                wprompts = train_prompts
                answers: dict[str, str] = {}
                if cfg.warmup_per_label:
                    from cada.data.pools import read_pool

                    wprompts = read_pool(run / "pool" / "warmup.jsonl")
                    have = {r["id"] for r in records}
                    need = [p for p in wprompts if p.label == "benign" and p.id not in have]
                    log(f"round {rnd}: the policy's answers to {len(need)} more benign warm-up prompts -> "
                        f"{rdir / 'answers.jsonl'}", done=log.active and _answered(rdir / "answers.jsonl", need))
                    t2 = time.perf_counter()
                    answers = direct_answers(need, gen, rdir / "answers.jsonl", g.max_new_tokens,
                                             show_progress=show_progress)
                    info["answer_seconds"] = round(time.perf_counter() - t2, 1)
                gen = None  # generation is done for this round: its model need not sit in memory while training
                rows, info["warmup_dropped_too_long"] = fit_length(
                    warmup_set(wprompts, records, spec, mode, answers), policy, cfg.warmup_train.max_length)
                write_records(wpath, rows)
                warm_from = policy
                if cfg.judgement and cfg.judgement_model:
                    warm_from = cfg.judgement_model
                elif cfg.judgement:
                    info.update(train_judgement(cfg, judgement_prompts(cfg, run), policy, rdir / "judgement",
                                                log=log))
                    warm_from = str(rdir / "judgement" / "model")
                log(f"round {rnd}: warm-up SFT on {len(rows)} rows -> {rdir / 'warmup'}")
                train(warm_from, wpath, rdir / "warmup", _sft_config(cfg.warmup_train, cfg.seed))
            start_model = str(rdir / "warmup" / "model")
            info["warmup_examples"] = len(read_records(wpath))
            if cfg.judgement:
                info["judgement_model"] = cfg.judgement_model or str(rdir / "judgement" / "model")
        gen = None
        if method == "dpo":
            rows, stats = dpo_pairs(records, spec, precedent_fallback=cfg.precedent_fallback,
                                     consistency=cfg.consistency)
            rows, stats["dropped_too_long"] = fit_length(rows, policy, t.max_length)
            data_path = rdir / "pairs.jsonl"
        else:
            rows, stats = sft_set(records, spec, sft_arm)
            rows, stats["dropped_too_long"] = fit_length(rows, policy, t.max_length)
            data_path = rdir / "sft.jsonl"
        write_records(data_path, rows)
        info["dataset"] = stats
        model_dir = rdir / "train" / "model"
        what = f"round {rnd}: {method.upper()} on {len(rows)} {'pairs' if method == 'dpo' else 'rows'}"
        if finished(rdir / "train"):
            log(f"{what} -> {rdir / 'train'}", done=True)
        else:
            log(f"{what} -> {rdir / 'train'}")
            train(start_model, data_path, rdir / "train", tcfg)
        _trained_seconds(info, judgement_seconds=rdir / "judgement", warmup_seconds=rdir / "warmup",
                         train_seconds=rdir / "train")
        _carry_seconds(info, rounds_before.get(rnd, {}))
        policy = str(model_dir)
        summary["rounds"].append(info)
    if cfg.calibration_per_label and method == "dpo":
        policy, summary["calibration"] = train_calibration(cfg, run, policy, spec, mode, show_progress=show_progress,
                                                           log=log)
        _carry_seconds(summary["calibration"], before.get("calibration", {}))
    summary["model"] = policy
    # the wall time of every invocation that reached this line, resumed ones included
    summary["seconds"] = round(before.get("seconds", 0.0) + time.perf_counter() - t_all, 1)
    write_json(run / "summary.json", summary)
    log(f"finished: the model is {policy}; summary in {run / 'summary.json'}")
    return summary
