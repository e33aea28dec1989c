"""One composed config tree: every setting of every command is declared here once, with its default and its help
text (the field's description, which the CLI's flags and the docs read), and YAML files and flags fill the same
objects.

    Recipe            what an arm's run and a study share: model, spec, pool, generation, the stages' training
    ├── AlignConfig   one arm (``cada align``): + arm, judgement_model
    └── StudyConfig   a study (``cada study``, ``cada demo``): + name, base_modes, arms, eval (EvalConfig, EvalSet)
    TrainConfig       one training run (``cada train``); a stage's section (StageTraining) is the same minus the
                      method and the seed, which its arm sets

The ARMS table names each arm's grounding mode and training method. Presets (the demo, the evaluation suites)
are YAML files in ``cada/recipes/``; the user-facing recipes sit in the repository's ``recipes/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cada.errors import CadaError, validation_message
from cada.records import read_yaml

RECIPES_DIR = Path(__file__).with_name("recipes")  # the presets shipped inside the package


# --- the arms -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    """One trained arm (the paper's section 4 names): the reasoning mode its chains or its sampling prompt are
    grounded in, its training method, and what it trains on."""

    name: str
    label: str        # the paper's name
    mode: str         # none | codes | cases
    method: str       # rl | dpo | sft
    data: str | None = None       # sft: dr | sc | cr (datasets.sft_set); dpo: cr (dpo_cr_pairs) | best-worst
    placement: str | None = None  # rl: distilled | in_prompt (where the spec sits, cada.rl)

    @property
    def staged(self) -> bool:
        """The staged DPO recipe (judgement stage, warm-up, DPO on best-vs-worst pairs, calibration pass)."""
        return self.data == "best-worst"

    @property
    def online(self) -> bool:
        """An RL arm: it samples its own chains while training, so it has no self-generation stage."""
        return self.method == "rl"


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("cada", "CADA", "cases", "rl", placement="distilled"),
    Arm("cada-in-prompt", "CADA (spec in prompt)", "cases", "rl", placement="in_prompt"),
    Arm("dpo-cr", "DPO w CR", "cases", "dpo", "cr"),
    Arm("sft-cr", "SFT w CR", "cases", "sft", "cr"),
    Arm("sft-dr", "SFT w DR", "none", "sft", "dr"),
    Arm("da", "Rules-only DA (SFT w Sc)", "codes", "sft", "sc"),
    Arm("staged", "Staged DPO", "cases", "dpo", "best-worst"),
)}
#: arms earlier versions named otherwise: a config naming one gets a one-line error naming the new arm
#: the settings only the staged recipe reads
STAGED_SETTINGS = ("warmup", "judgement", "consistency", "precedent_fallback", "warmup_per_label",
                   "judgement_per_label", "judgement_model", "calibration_per_label")
RENAMED_ARMS = {"sft-sc": "da (the paper's rules-only DA is SFT on codes-grounded chains)"}
ArmName = Literal["cada", "cada-in-prompt", "dpo-cr", "sft-cr", "sft-dr", "da", "staged"]
ModeName = Literal["none", "codes", "cases"]
MODE_LABELS = {"none": "w/o SR", "codes": "SR w S (codes)", "cases": "SR w C (cases)"}
DEFAULT_MODEL = "smollm2-135m"


# --- the base ------------------------------------------------------------------------------------------

class Settings(BaseModel):
    """A section of the tree: unknown keys are errors; loaded from YAML with ``FILE:LINE: field: problem``."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def check_source(cls, data, path) -> None:
        """A hook for a one-line error before validation (e.g. a config of the wrong kind)."""

    @classmethod
    def from_yaml(cls, path: str | Path):
        data = read_yaml(path)
        cls.check_source(data, path)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise CadaError(validation_message(e, path)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def with_values(self, values: dict[str, Any], where: str | None = None, flags: dict[str, str] | None = None):
        """A copy with the given dotted settings (``"generation.n": 8``) replaced, validated again; ``None`` values
        are settings nobody gave (a flag left out), so the config's own value stays. ``flags`` names the flag that
        gave a setting, so that a bad value's error names the flag (``--mode 'bogus': ...``)."""
        data = self.model_dump()
        for key, value in values.items():
            if value is None:
                continue
            *parents, leaf = key.split(".")
            node = data
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        try:
            return type(self).model_validate(data)
        except ValidationError as e:
            key = ".".join(map(str, e.errors()[0]["loc"]))
            if flags and key in flags and values.get(key) is not None:
                raise CadaError(f"{flags[key]} {values[key]!r}: {e.errors()[0]['msg']}") from None
            raise CadaError(validation_message(e, where)) from None

    def differences(self, other: "Settings", most: int = 3) -> str:
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


def describe(cls: type[BaseModel], name: str) -> str:
    """A field's help text (its description), for the CLI's flags."""
    return cls.model_fields[name].description or ""


# --- talking to a server ---------------------------------------------------------------------------------

def _timeout_field() -> Any:
    return Field(120.0, gt=0, allow_inf_nan=False, description="Seconds to wait for one answer of an "
                 "OpenAI-compatible server (--base-url, or the rubric judge's) before the request is retried, then "
                 "fails; default 120.")


def _retries_field() -> Any:
    return Field(3, ge=0, description="Retries, with backoff, of a server request that timed out, could not "
                 "connect or got a 408/429/5xx answer, before it counts as failed; default 3.")


class HttpConfig(Settings):
    """How cada talks to an OpenAI-compatible server (the policy's ``--base-url``, or the rubric judge's)."""

    timeout: float = _timeout_field()
    max_retries: int = _retries_field()


# --- pools, generation, training ------------------------------------------------------------------------

class PoolConfig(Settings):
    user_pool: str | None = Field(None, description="Your own prompt pool (CSV/JSON/JSONL with prompt,label"
                                  "[,category]); default: the shipped pools.")
    limit_per_label: int | None = Field(None, ge=1, description="Self-generation prompts per label (CPU-sized "
                                        "runs); default: the whole pool.")
    heldout_per_label: int = Field(50, ge=0, description="Prompts per label held back, never trained on.")
    jailbreak_share: float = Field(0.25, ge=0, le=1, description="Share of the shipped pools' harmful prompts "
                                   "wrapped in training-side jailbreak templates (a user_pool is used as given).")
    sources: list[str] | None = Field(None, description="Shipped training sources to draw from (names in "
                                      "cada.data.sources.SOURCES, e.g. [beavertails] as the paper); default: "
                                      "do_not_answer, hh_rlhf, ifeval, coconot_contrast, coconot_pref.")
    validation_per_label: int = Field(0, ge=0, description="Look-alike validation prompts (OR-Bench-80K benign, "
                                      "OR-Bench toxic harmful) held back from every stage, to choose settings on; "
                                      "0 = none.")


class GenConfig(Settings):
    """How the policy samples its chains (self-generation) and its direct answers."""

    n: int = Field(4, ge=1, description="Chains per prompt.")
    k: int = Field(6, ge=0, description="Precedents in context for the cases mode: the k most similar by "
                   "embedding; 0 = all.")
    temperature: float = Field(0.9, ge=0, allow_inf_nan=False, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(192, ge=1, description="New tokens per answer.")
    batch_size: int = Field(16, ge=1, description="Prompts per local generation batch.")


class SelfGenConfig(GenConfig):
    """Self-generation: the generation settings, the mode the chains are grounded in, and the seed."""

    mode: ModeName = Field("cases", description="cases (CADA) | codes (rules-only DA) | none.")
    seed: int = Field(0, description="Random seed (each chunk of prompts is seeded by its place in the pool).")
    chunk_size: int = Field(32, ge=1, description="Prompts per checkpoint.")


class StageTraining(Settings):
    """One training stage's hyper-parameters (CPU-sized defaults for the embedded model). The names are cada's;
    :func:`cada.train.trl_args` maps them onto TRL's own config class, and ``extra`` goes to it as is."""

    learning_rate: float = Field(2e-4, gt=0, allow_inf_nan=False, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, allow_inf_nan=False, description="Epochs over the training set.")
    batch_size: int = Field(8, ge=1, description="Examples per device and step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    beta: float = Field(0.1, ge=0, allow_inf_nan=False, description="DPO / GRPO KL strength.")
    sft_weight: float = Field(0.0, ge=0, allow_inf_nan=False, description="DPO: add the NLL of the chosen side "
                              "with this weight (TRL loss_type sft, RPO): keeps the answer format when easy pairs "
                              "saturate the DPO margin.")
    lora_r: int = Field(16, ge=0, description="LoRA rank; 0 = full fine-tuning.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    top_layers: int = Field(0, ge=0, description="With lora_r 0: train only the top N decoder layers (0 = all); "
                            "the frozen bottom needs no backward pass, so a CPU step costs about half.")
    max_length: int = Field(768, ge=1, description="Longest example in tokens (DPO / SFT); longer ones are "
                            "dropped, not truncated.")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Learning-rate warm-up, as a share of all steps.")
    logging_steps: int = Field(5, ge=1, description="Steps between log lines (train_log.jsonl).")
    bf16: bool | None = Field(None, description="bf16 autocast (float32 weights stay float32); None = where the "
                              "hardware has it (a GPU with bf16, or a CPU with AVX512-BF16 / AMX).")
    merge: bool = Field(True, description="Save a merged model in <output>/model (False: only the LoRA adapter).")
    report_to: str = Field("auto", description="auto (tensorboard when installed, else none) | tensorboard | "
                           "wandb | none.")
    num_generations: int = Field(4, ge=2, description="GRPO: completions per prompt.")
    max_completion_length: int = Field(192, ge=1, description="GRPO: new tokens per completion.")
    baseline: Literal["group", "running"] = Field("group", description="RL: what a reward is measured against: "
                                                  "group (the mean of the prompt's num_generations samples, "
                                                  "GRPO's) | running (the paper's running mean of all rewards).")
    baseline_rate: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="RL, running "
                                        "baseline: its step size beta_t; default 1/t (the mean of every reward so "
                                        "far).")
    extra: dict = Field(default_factory=dict, description="Options passed to TRL's config class as they are.")


class TrainConfig(StageTraining):
    """One training run (``cada train``, or a stage with its arm's method and seed filled in)."""

    method: Literal["dpo", "sft", "grpo", "rl"] = Field("dpo", description="dpo | sft | grpo (TRL's, as it is) | "
                                                       "rl (the paper's REINFORCE with a KL penalty, on GRPO).")
    seed: int = Field(0, description="Random seed.")

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v):
        if v not in ("dpo", "sft", "grpo", "rl"):
            raise ValueError(f"{v!r}: use one of dpo, sft, grpo, rl")
        return v


def stage(section: StageTraining, method: str, seed: int) -> TrainConfig:
    """A stage's section as the TrainConfig that trains it."""
    return TrainConfig(**section.model_dump(), method=method, seed=seed)


class RLSettings(Settings):
    """The CADA arms' online RL (:mod:`cada.rl`): the prompts it samples on and the prompt it samples from. Its
    training hyper-parameters are the recipe's ``rl_train`` section."""

    prompts: Literal["harmful", "mixed"] = Field("harmful", description="harmful (the paper's: the pool's "
                                                 "harmful prompts) | mixed (its benign ones too: helping "
                                                 "rewarded, refusing penalised).")
    k: int = Field(3, ge=0, description="Precedents in the sampling prompt, nearest the request (0 = all).")
    hint: bool = Field(True, description="The precedents of the request's hazard category first (the paper's "
                       "hint h).")
    reward: Literal["format", "rubric"] = Field("format", description="r_judge for a refusal: format (the "
                                                "paper's: 1 with reasoning, 0 without) | rubric (a judge LLM "
                                                "scores the reasoning against the hazard category, over "
                                                "judge_base_url).")
    judge_base_url: str | None = Field(None, description="reward rubric: OpenAI-compatible server of the judge "
                                       "(key: $CADA_JUDGE_API_KEY, else $CADA_API_KEY).")
    judge_model: str | None = Field(None, description="reward rubric: the judge's model name on that server.")

    @model_validator(mode="after")
    def _judge(self):
        if self.reward == "rubric" and not (self.judge_base_url and self.judge_model):
            raise ValueError("reward rubric needs judge_base_url and judge_model")
        return self


# --- one arm, and what a study shares with it -----------------------------------------------------------

class Recipe(Settings):
    """What one arm's run depends on besides the arm itself; a study shares it between its arms."""

    model: str = Field(DEFAULT_MODEL, description="Policy to align: embedded alias, local HF folder, or hub id "
                       "(downloads only then).")
    spec: str | None = Field(None, description="Spec folder or YAML file (default: the shipped spec).")
    base_url: str | None = Field(None, description="Generate through an OpenAI-compatible server instead of "
                                 "locally (round 1; later rounds use the trained policy).")
    seed: int = Field(0, description="Random seed of every draw, sample and training run.")
    rounds: int = Field(1, ge=1, description="Regenerate with the trained policy and train again.")
    warmup: bool = Field(True, description="Staged arm: SFT warm-up on precedent-grounded chains before "
                         "DPO.")
    # a floor: without pool.limit_per_label the self-generation pool is the whole pool; harmful warm-up prompts
    # cost nothing (precedent-grounded refusals), benign ones one direct answer from the policy
    warmup_per_label: int | None = Field(None, ge=1, description="Warm-up prompts per label: the self-generation "
                                         "prompts, then more from the whole training pool up to this many "
                                         "(default: the self-generation prompts alone).")
    # in a warm-up example the decision is one token among a hundred, and a small policy learns it far better on
    # its own (docs/training.md); each prompt costs one short training example, no generation
    judgement: bool = Field(True, description="Staged arm: before the warm-up, SFT on the judgement line alone (\"This "
                            "request is harmful.\" / \"... benign.\").")
    judgement_per_label: int | None = Field(None, ge=1, description="Judgement-stage prompts per label from the "
                                            "whole training pool, always including the warm-up prompts "
                                            "(default: just those).")
    precedent_fallback: bool = Field(True, description="Staged arm: a harmful prompt whose samples all comply gets a "
                                     "marked precedent-grounded refusal as chosen.")
    # the answer learns to follow the decision: the benign refusals left after the warm-up were answers that
    # contradict a "benign" analysis (docs/training.md)
    consistency: bool = Field(False, description="Staged arm: DPO twins, the chosen analysis with the wrong answer.")
    # one epoch each at a low learning rate, on prompts set aside before any other stage draws: moves the line
    # towards "benign" on look-alikes; whole rows keep the answer going after the judgement line (docs/training.md)
    calibration_per_label: int | None = Field(None, ge=2, description="Staged arm: after DPO, a last pass on this "
                                              "many fresh benign prompts and half as many harmful ones "
                                              "(judgement lines and whole warm-up rows; off by default).")
    pool: PoolConfig = PoolConfig()
    generation: GenConfig = GenConfig()
    train: StageTraining = StageTraining()
    warmup_train: StageTraining = StageTraining(epochs=1.0)
    judgement_train: StageTraining = StageTraining(learning_rate=5e-5, epochs=2.0, lora_r=0, max_length=320)
    calibration_train: StageTraining = StageTraining(learning_rate=1e-5, epochs=1.0, lora_r=0, max_length=1024)
    rl: RLSettings = RLSettings()
    # CPU-sized for the embedded model (docs/training.md says what each was chosen on); the paper's beta_KL is 0.01
    # no LoRA dropout: TRL samples in training mode, so dropout would make the samples another policy's than the
    # one whose log-probabilities the update takes
    rl_train: StageTraining = StageTraining(learning_rate=5e-5, beta=0.01, batch_size=8, num_generations=4,
                                            max_completion_length=128, baseline="running", lora_dropout=0.0)

    @model_validator(mode="after")
    def _merged(self):
        # an arm's stages train on from each other and every command takes the result as --model, so they keep
        # merged models (the LoRA adapter is saved beside them); adapter-only output is `cada train --no-merge`
        for name in ("train", "warmup_train", "judgement_train", "calibration_train", "rl_train"):
            if not getattr(self, name).merge:
                raise ValueError(f"{name}.merge: an arm keeps merged models (its adapter is saved beside); for "
                                 "an adapter alone use `cada train --no-merge`")
        return self


class AlignConfig(Recipe):
    """Everything one arm's run depends on; saved as ``config.yaml`` in the run folder."""

    arm: ArmName = Field("cada", description=" | ".join(ARMS) + ".")
    judgement_model: str | None = Field(None, description="Staged arm: a finished judgement stage to start the "
                                        "warm-up from (a study shares one).")

    @field_validator("arm", mode="before")
    @classmethod
    def _renamed(cls, v):
        if v in RENAMED_ARMS:
            raise ValueError(f"arm {v!r} is now {RENAMED_ARMS[v]}")
        return v

    @property
    def spec_arm(self) -> Arm:
        return ARMS[self.arm]

    def unused_settings(self) -> list[str]:
        """Settings given a value of their own that this arm's stages never read (a shared config file run with
        another ``--arm``, or a stage switched off while its sizes are set); ``align`` says so rather than fail."""
        def given(k: str) -> bool:
            value = getattr(self, k)
            return bool(value) and value != type(self).model_fields[k].default

        out = []
        if not self.spec_arm.staged:  # only the staged recipe has a judgement stage, warm-up and calibration
            out += [k for k in STAGED_SETTINGS if given(k)]
        elif not self.warmup:  # the judgement stage runs before the warm-up, so it goes with it
            out += [k for k in ("warmup_per_label", "judgement", "judgement_per_label", "judgement_model")
                    if getattr(self, k)]
        elif not self.judgement:
            out += [k for k in ("judgement_per_label", "judgement_model") if getattr(self, k)]
        if not self.spec_arm.online:
            out += [k for k in ("rl", "rl_train") if getattr(self, k) != type(self).model_fields[k].default]
        return out

    @classmethod
    def check_source(cls, data, path) -> None:
        if isinstance(data, dict) and ("arms" in data or "base_modes" in data):
            raise CadaError(f"{path}: a study's config (it lists arms), not one arm's: run it with "
                            f"`cada study --config {path}`")


# --- evaluation -------------------------------------------------------------------------------------

Kind = Literal["harmful", "benign", "utility"]


class EvalSet(Settings):
    """One evaluation set: a shipped benchmark or a user file, optionally wrapped in jailbreak attacks."""

    name: str = Field(description="Label in the report; the shipped benchmark unless file/benchmark.")
    benchmark: str | None = Field(None, description="A shipped benchmark: strongreject, strongreject-small, "
                                  "advbench, xstest-safe, xstest-unsafe, gsm8k, bbh, mmlu, bbh-full "
                                  "($CADA_BBH_DIR), mmlu-full ($CADA_MMLU_DIR) (default: name).")
    file: str | None = Field(None, description="Your own CSV / JSON / JSONL of prompts.")
    prompt_column: str = Field("prompt", description="Prompt column of the file.")
    reference_column: str | None = Field(None, description="Reference answers (utility sets).")
    category_column: str | None = Field(None, description="Category of each prompt in the file (e.g. HEx-PHI's "
                                        "11 categories): per-category rates, and --limit spread over them.")
    kind: Kind | None = Field(None, description="harmful | benign | utility (required with a file).")
    limit: int | None = Field(None, ge=1, description="N prompts (before wrapping), spread over the set's "
                              "categories.")
    attacks: list[str] = Field([], description="Jailbreak wrappers: inthewild, prefix_injection, "
                               "refusal_suppression; or one searched attack, pair or pap (a study runs it once "
                               "against the base model and replays its best attacks on every system; `cada "
                               "eval` replays a `cada attack` run's file with --attack-file).")
    templates: int = Field(2, ge=1, description="In-the-wild templates per prompt.")
    attack_file: str | None = Field(None, description="CSV of ready-made attack prompts (PAIR / GCG artifacts).")
    attack_column: str = Field("prompt", description="Prompt column of the attack file.")

    @field_validator("attacks")
    @classmethod
    def _searched_alone(cls, v: list[str]) -> list[str]:
        # a searched attack's set is its replayed attacks: one per goal, so it cannot share a set with wrappers
        searched = [a for a in v if a in SEARCHED_ATTACKS]
        if searched and len(v) > 1:
            raise ValueError(f"{searched[0]} is a searched attack: give it a set of its own (attacks: "
                             f"[{searched[0]}])")
        return v

    @model_validator(mode="after")
    def _searched_or_file(self):
        if self.searched and self.attack_file:
            raise ValueError(f"attacks: [{self.searched}] searches for the set's attacks; attack_file gives them "
                             "ready-made: name one of the two")
        return self

    @property
    def searched(self) -> str | None:
        """The searched attack (pair, pap) of this set, if it is one."""
        return next((a for a in self.attacks if a in SEARCHED_ATTACKS), None)


#: attacks an attacker LLM searches for (cada.evaluate.pair, cada.evaluate.pap), as opposed to fixed wrappers
SEARCHED_ATTACKS = ("pair", "pap")


class AttackConfig(Settings):
    """A study's searched attacks (sets with ``attacks: [pair]`` or ``[pap]``): run once against the base model
    (bare request), their best attack per goal replayed on every system, as the paper's arms are compared."""

    attacker_model: str | None = Field(None, description="Attacker model (default: the study's model): embedded "
                                       "alias, local folder, hub id, or a served name with attacker_base_url.")
    attacker_base_url: str | None = Field(None, description="OpenAI-compatible server of the attacker (key: "
                                          "$CADA_ATTACKER_API_KEY, else $CADA_API_KEY).")
    judge_model: str | None = Field(None, description="Judge model rating answers 1-10 (default: the attacker).")
    judge_base_url: str | None = Field(None, description="OpenAI-compatible server of that judge (key: "
                                       "$CADA_JUDGE_API_KEY, else $CADA_API_KEY).")
    streams: int = Field(20, ge=1, description="PAIR: parallel attacker conversations per goal (the paper's 20).")
    iterations: int = Field(3, ge=1, description="PAIR: rounds of each conversation (the paper's 3).")
    techniques: list[str] = Field(["Misrepresentation"], description="PAP: persuasion techniques (`cada attack "
                                  "techniques`; the paper's: Misrepresentation).")
    samples: int = Field(3, ge=1, description="PAP: paraphrases tried per goal and technique.")
    attacker_max_new_tokens: int | None = Field(None, ge=1, description="The attacker's new tokens per output "
                                                "(default: PAIR 500, PAP 300).")
    success: int = Field(10, ge=1, le=10, description="The judge's rating that counts as a jailbreak.")

    @field_validator("techniques")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from cada.evaluate.pap import technique

        try:
            return [technique(t) for t in v]
        except CadaError as e:
            raise ValueError(str(e).removeprefix("--technique ")) from None

    @model_validator(mode="after")
    def _served_by_name(self):
        for role in ("attacker", "judge"):
            if getattr(self, f"{role}_base_url") and not getattr(self, f"{role}_model"):
                raise ValueError(f"{role}_base_url needs {role}_model (the served model's name)")
        return self


@lru_cache(maxsize=1)
def _suites() -> dict[str, tuple[EvalSet, ...]]:
    data = read_yaml(RECIPES_DIR / "suites.yaml")
    return {name: tuple(EvalSet.model_validate(s) for s in sets) for name, sets in data.items()}


def suites() -> dict[str, list[EvalSet]]:
    """The named evaluation suites (``cada/recipes/suites.yaml``)."""
    return {name: list(sets) for name, sets in _suites().items()}


def suite(name: str) -> list[EvalSet]:
    if name not in _suites():
        raise CadaError(f"--suite {name!r}: use one of {', '.join(_suites())}")
    return list(_suites()[name])


class EvalConfig(Settings):
    suite: str | list[EvalSet] = Field("default", description="A named suite (default | demo | full) or a list "
                                       "of sets.")
    max_new_tokens: int = Field(192, ge=1, description="New tokens per answer.")
    k: int = Field(6, ge=0, description="Precedents in context for the cases mode (0 = all).")
    batch_size: int = Field(16, ge=1, description="Prompts per local generation batch.")
    judge: Literal["refusal", "rubric"] = Field("refusal", description="refusal (offline) | rubric (StrongREJECT "
                                                "rubric over judge_base_url).")
    judge_base_url: str | None = Field(None, description="OpenAI-compatible server of the rubric judge (key: "
                                       "$CADA_JUDGE_API_KEY, else $CADA_API_KEY).")
    judge_model: str | None = Field(None, description="Rubric judge model name on that server.")
    # the rubric judge's server and `cada eval --base-url`'s; a study's policy server once the pipeline passes them
    timeout: float = _timeout_field()
    max_retries: int = _retries_field()
    loglik_n: int = Field(32, ge=0, description="GSM8K reference answers scored for log-likelihood (0 = skip).")
    # the in-distribution check of docs/training.md, reported apart from the benchmarks
    heldout: bool = Field(False, description="Also answer the training pools' held-back prompts (heldout-harmful, "
                          "heldout-benign).")
    attack: AttackConfig = AttackConfig()

    @field_validator("suite", mode="before")
    @classmethod
    def _suite(cls, v):
        # checked here, so a wrong name or shape is an error with the config's file and line before anything runs
        if isinstance(v, str) and v not in _suites():
            raise ValueError(f"unknown suite {v!r}: use one of {', '.join(_suites())} or a list of sets")
        if not isinstance(v, (str, list)):
            raise ValueError(f"a suite name ({', '.join(_suites())}) or a list of sets")
        return v

    def sets(self) -> list[EvalSet]:
        return suite(self.suite) if isinstance(self.suite, str) else list(self.suite)


# --- a study -----------------------------------------------------------------------------------------

class StudyConfig(Recipe):
    """Everything a study depends on; saved as ``config.yaml`` in the study folder."""

    name: str = Field("study", description="The study's name (default folder runs/<name>).")
    base_modes: list[ModeName] = Field(["none", "codes", "cases"], description="The base model's reasoning modes.")
    arms: list[ArmName] = Field(["cada", "dpo-cr", "sft-cr", "da"], description="The arms to train: "
                                + ", ".join(ARMS) + ".")

    @field_validator("arms", mode="before")
    @classmethod
    def _renamed(cls, v):
        for a in v if isinstance(v, list) else []:
            if a in RENAMED_ARMS:
                raise ValueError(f"arm {a!r} is now {RENAMED_ARMS[a]}")
        return v
    eval: EvalConfig = EvalConfig()

    @property
    def shared_judgement(self) -> bool:
        """Whether the study trains one judgement stage for its staged arm's warm-up."""
        return self.warmup and self.judgement and any(ARMS[a].staged for a in self.arms)

    def arm_config(self, arm: str, judgement_model: str | None = None) -> AlignConfig:
        """One arm's config: the shared recipe, with the calibration pass only for the staged arm."""
        shared = self.model_dump(include=set(Recipe.model_fields))
        if not ARMS[arm].staged:
            shared["calibration_per_label"] = None
        return AlignConfig(**shared, arm=arm, judgement_model=judgement_model)


def check_layout(saved: Path) -> None:
    """Refuse a run or study folder whose ``config.yaml`` predates the RL arms (it has no ``rl_train``) where it
    names an arm whose meaning changed: its finished stages would be read as the new arm's."""
    raw = read_yaml(saved)
    if not isinstance(raw, dict) or "rl_train" in raw:
        return
    arms = raw.get("arms") if "arms" in raw else [raw.get("arm", "cada")]
    changed = [a for a in arms or [] if a in ("cada", "da", "sft-sc")]
    if changed:
        raise CadaError(f"{saved}: written before CADA became online RL, when arm(s) {', '.join(changed)} meant "
                        "DPO recipes (now arm 'staged'; 'da' is SFT on codes-grounded chains): use a new "
                        "--output (the old models stay where they are)")


def demo_config(model: str = DEFAULT_MODEL) -> StudyConfig:
    """The CPU-sized preset behind ``cada demo`` (``cada/recipes/demo.yaml``)."""
    cfg = StudyConfig.from_yaml(RECIPES_DIR / "demo.yaml")
    return cfg if model == cfg.model else cfg.model_copy(update={"model": model})


def load_study(path: str | Path) -> StudyConfig:
    """A study config from a YAML file, or a shipped preset by name (``demo``)."""
    p = Path(path)
    if not p.exists() and (RECIPES_DIR / f"{p.name}.yaml").is_file() and p.suffix == "":
        p = RECIPES_DIR / f"{p.name}.yaml"
    return StudyConfig.from_yaml(p)
