"""Training with TRL: DPO (CADA's default), SFT (the SFT arms and the warm-up), GRPO (online, judge as reward).

LoRA via peft by default (``lora_r=0`` for full fine-tuning). Whatever the method, the output folder holds a plain
merged Hugging Face model in ``<output>/model`` that every cada command takes as ``--model`` (and the adapter in
``<output>/adapter`` when LoRA was used; with ``merge=False`` only the adapter, which commands also take as
``--model`` for generation). Runs under ``accelerate launch`` for multi-GPU (recipes/accelerate/).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import warnings
from dataclasses import fields
from pathlib import Path

from cada.config import TrainConfig
from cada.errors import CadaError, validation_message
from cada.models.load import bf16_native, cpu_bf16_native

log = logging.getLogger(__name__)


def load_train_config(path: str | Path) -> dict:
    """TrainConfig settings from a YAML file (e.g. ``recipes/grpo-vllm.yaml``), checked (types, ranges, unknown
    keys) with one-line errors naming the file and line; flags are laid over them before the config is built."""
    from cada.records import read_yaml

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise CadaError(f"{path}: expected a mapping of TrainConfig fields")
    known = set(TrainConfig.model_fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise CadaError(f"{path}: unknown field {unknown[0]!r} (TrainConfig fields: {', '.join(sorted(known))}; "
                        "TRL options go under `extra`)")
    if not isinstance(data.get("extra", {}), dict):
        raise CadaError(f"{path}: extra: expected a mapping of TRL config options")
    from pydantic import ValidationError

    try:  # types and ranges, with the file's line (the method is checked with the flags, which override it)
        TrainConfig.model_validate({**data, "method": "dpo"})
    except ValidationError as e:
        raise CadaError(validation_message(e, path)) from None
    return data


def _report_to(value: str) -> str:
    if value == "auto":
        return "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    return value


def _checkpointing_option() -> str:
    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _weights_dtype(cfg: TrainConfig):
    """The dtype the policy's weights are trained in. Full fine-tuning keeps float32 weights (bf16 only as
    autocast): a bf16 weight cannot hold an Adam step of lr 1e-6 to 5e-5, which rounds away; a LoRA base is frozen,
    so bf16 there (peft keeps the adapters in float32)."""
    import torch

    return torch.bfloat16 if cfg.lora_r > 0 and bf16_native() else torch.float32


def bf16_autocast() -> bool:
    """Train under bf16 autocast by default? Where the hardware computes in bf16: a GPU with bf16 in hardware, or a
    CPU with bf16 matrix instructions (:func:`cada.models.load.cpu_bf16_native`)."""
    import torch

    return bf16_native() if torch.cuda.is_available() else cpu_bf16_native()


def trl_args(cfg: TrainConfig, output: Path) -> dict:
    """The keyword arguments of TRL's config class for ``cfg``: cada's names mapped onto TRL's, then ``extra``."""
    import torch

    cuda = torch.cuda.is_available()
    bf16 = cfg.bf16 if cfg.bf16 is not None else bf16_autocast()
    args = dict(output_dir=str(output / "trainer"), learning_rate=cfg.learning_rate,
                num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=cfg.grad_accum, seed=cfg.seed, logging_steps=cfg.logging_steps,
                # a checkpoint every quarter of the run (the last one kept), so a killed run resumes from it
                report_to=_report_to(cfg.report_to), save_strategy="steps", save_steps=0.25,
                save_total_limit=1, warmup_steps=cfg.warmup_ratio,  # < 1: a ratio of all steps
                lr_scheduler_type="cosine", bf16=bf16,
                use_cpu=not cuda, dataloader_num_workers=0)
    # checkpointing trades compute for GPU memory; on the CPU it only costs time. transformers 5.x renamed the
    # option (the old name warns on every run); a user's own setting in `extra`, under either name, wins
    if not {"gradient_checkpointing", "activation_checkpointing"} & set(cfg.extra):
        args[_checkpointing_option()] = cuda
    args.update(cfg.extra)
    return args


def _peft(cfg: TrainConfig):
    if cfg.lora_r <= 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


# the columns each method reads (any one of the alternatives); see ``train``'s docstring
_COLUMNS = {"dpo": [("prompt", "chosen", "rejected")],
            "sft": [("messages",), ("prompt", "completion"), ("text",), ("input_ids",)],
            "grpo": [("prompt",)], "rl": [("prompt", "label")]}


def _dataset(path_or_rows, method: str = "dpo"):
    from datasets import Dataset, load_dataset

    if isinstance(path_or_rows, list):
        return Dataset.from_list(path_or_rows)
    path = Path(path_or_rows)
    if not path.is_file():
        raise CadaError(f"{path}: training data not found")
    check_rows(path, method)
    return load_dataset("json", data_files=str(path), split="train")


def check_rows(path: Path, method: str) -> None:
    """One-line errors, naming the row, for a training file TRL could not read or would fail on mid-run."""
    from cada.records import read_rows

    if path.suffix.lower() not in (".jsonl", ".json"):
        raise CadaError(f"{path}: training data is JSONL (one JSON object a line), as `cada pairs` writes it")
    rows = read_rows(path)
    if not rows:
        raise CadaError(f"{path}: the training set is empty: nothing to train on")
    shapes = _COLUMNS.get(method, [()])
    for i, row in enumerate(rows, 1):
        if not any(all(c in row for c in shape) for shape in shapes):
            want = " or ".join("/".join(shape) for shape in shapes)
            raise CadaError(f"{path}: row {i}: a {method} row needs {want}; this one has "
                            f"{', '.join(sorted(row)) or 'no fields'}")


def finished(output: str | Path) -> bool:
    """Whether a training run into ``output`` finished. ``train_info.json`` is written after the model, so a run
    killed while saving its weights (``config.json`` is written before them) is not taken for a finished one, and
    a run whose model folder was deleted trains again."""
    output = Path(output)
    return (output / "train_info.json").exists() and any(
        (output / d / f).exists() for d, f in (("model", "config.json"), ("adapter", "adapter_config.json")))


def train(model: str, data, output: str | Path, config: TrainConfig = TrainConfig(), *,
          trust_remote_code: bool = False, reward_funcs=None) -> Path:
    """Train ``model`` on ``data`` (JSONL path or rows) with ``config.method``; returns ``<output>/model``.

    Data shapes (as written by :mod:`cada.datasets`): DPO ``prompt/chosen/rejected`` (conversational), SFT
    ``messages``, GRPO ``prompt`` plus a ``label`` column (harmful | benign) the reward functions read.
    """
    import torch
    from transformers import AutoTokenizer

    from cada.models.load import resolve_trainable

    output = Path(output)
    dataset = _dataset(data, config.method)  # checked before anything is written or loaded
    source = resolve_trainable(model)
    if torch.cuda.device_count() > 1 and "WORLD_SIZE" not in os.environ:
        # transformers would wrap the model in nn.DataParallel, which TRL refuses mid-setup
        raise CadaError(f"{torch.cuda.device_count()} GPUs are visible to one process: train on several with "
                        "`accelerate launch --config_file recipes/accelerate/ddp.yaml -m cada.cli train ...`, or "
                        "make one visible (CUDA_VISIBLE_DEVICES=0), e.g. for `cada align` and `cada study`")
    output.mkdir(parents=True, exist_ok=True)
    (output / "train_info.json").unlink(missing_ok=True)  # the run is finished again only once its model is saved
    if len(dataset) == 0:
        raise CadaError("the training set is empty: nothing to train on")
    from cada.models.load import release_models

    release_models()  # generation models cached by earlier stages of this process: not needed while training
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = trl_args(config, output)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # peft and TRL still read a deprecated transformers alias on every run; nothing for the user to do
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        # TRL loads the policy from its path once its config exists, so DeepSpeed ZeRO-3 and FSDP can shard it
        # while loading instead of every rank holding a whole copy first
        trainer = _trainer(config, source, tokenizer, dataset, args, reward_funcs, trust_remote_code)
        if len(trainer.train_dataset) == 0:  # TRL dropped every example longer than max_length
            raise CadaError(f"every one of the {len(dataset)} training examples is longer than max_length="
                            f"{config.max_length} tokens: raise --max-length (or max_length in the config)")
        if config.top_layers and config.lora_r <= 0:
            _freeze_below(trainer.model, config.top_layers)  # before train() builds the optimizer
        _quiet_progress(trainer, output)
        from accelerate import PartialState

        with PartialState().main_process_first():  # the main process clears stale checkpoints, then the others look
            resume = _checkpoint_to_resume(output / "trainer", _fingerprint(model, dataset, config))
        result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    info = {"train_seconds": round(seconds, 1), "examples": len(dataset), "base_model": str(model),
            "steps": result.global_step, "train_loss": round(result.training_loss, 4),
            "weights_dtype": str(next(p for p in trainer.model.parameters() if p.requires_grad).dtype
                                 ).replace("torch.", ""), "bf16_autocast": args.get("bf16")}
    if resume:
        info["resumed_from"] = Path(resume).name
    return _save(trainer, tokenizer, output, config, info, trust_remote_code)


def _fingerprint(model: str, dataset, config: TrainConfig) -> str:
    """What a checkpoint must have been trained on to be resumed: the model, the data and every setting."""
    import hashlib

    h = hashlib.sha256(json.dumps([str(model), config.model_dump()], sort_keys=True, default=str).encode())
    for row in dataset:  # the rows themselves (a datasets fingerprint can differ between processes)
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _checkpoint_to_resume(trainer_dir: Path, fingerprint: str) -> str | None:
    """The latest checkpoint of an interrupted run on the same model, data and settings; else None (and stale
    checkpoints of another run are removed, so the new run cannot mix with them)."""
    import shutil

    stamp = trainer_dir / "cada_fingerprint.txt"
    checkpoints = sorted(trainer_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                         if p.name.split("-")[-1].isdigit() else -1)
    same = stamp.is_file() and stamp.read_text().strip() == fingerprint
    if not same:
        for c in checkpoints:
            shutil.rmtree(c, ignore_errors=True)
        trainer_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        return None
    # transformers writes trainer_state.json last: a checkpoint without it was cut off by a kill mid-save, so it is
    # removed and the newest whole one (if any) is resumed
    while checkpoints and not _whole(checkpoints[-1]):
        log.warning("%s was cut off while being written; removed (training resumes from the one before it)",
                    checkpoints[-1])
        shutil.rmtree(checkpoints.pop(), ignore_errors=True)
    return str(checkpoints[-1]) if checkpoints else None


def _whole(checkpoint: Path) -> bool:
    """A checkpoint whose trainer_state.json (the last file transformers writes) is there and reads as JSON."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def _trainer(config: TrainConfig, source: str, tokenizer, dataset, args: dict, reward_funcs,
             trust_remote_code: bool = False):
    """The TRL trainer for ``config.method`` (LoRA through peft when ``lora_r`` > 0); TRL loads the policy from
    ``source`` with the weights dtype of :func:`_weights_dtype`."""
    import torch

    # device_map None: the trainer places the model (TRL's own default, "auto", would split it across the GPUs of
    # an FSDP run); a user's model_init_kwargs in `extra` win
    init = {"dtype": _weights_dtype(config), "device_map": None, "trust_remote_code": trust_remote_code,
            **(args.pop("model_init_kwargs", None) or {})}
    common = {"trust_remote_code": trust_remote_code, **args, "model_init_kwargs": init}
    if config.method == "dpo":
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig, DPOTrainer

        rpo = ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, config.sft_weight]}
               if config.sft_weight and "loss_type" not in config.extra else {})
        targs = DPOConfig(beta=config.beta, max_length=config.max_length, **rpo, **common)
        ref = None
        if config.lora_r <= 0 and bf16_native():
            # full fine-tuning on a bf16 GPU: the frozen reference needs no float32 copy (built after the config,
            # so ZeRO-3 shards it as it loads; TRL prepares it for DeepSpeed/FSDP)
            ref = AutoModelForCausalLM.from_pretrained(source, **{**init, "dtype": torch.bfloat16})
        trainer = DPOTrainer(model=source, ref_model=ref, args=targs, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=_peft(config))
    elif config.method == "sft":
        from trl import SFTConfig, SFTTrainer

        # length-grouped batches: far less padding (about 2x faster on the CPU with mixed prompt lengths)
        targs = SFTConfig(max_length=config.max_length, assistant_only_loss=False, completion_only_loss=None,
                          **{"train_sampling_strategy": "group_by_length", **common})
        trainer = SFTTrainer(model=source, args=targs, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=_peft(config))
    elif config.method == "rl":
        from trl import GRPOConfig

        from cada.judges.reward import cada_reward
        from cada.rl import PAPER_GRPO, CadaRLTrainer

        # the running baseline is a stateful callback: restored from the checkpoint (off by default in transformers)
        targs = GRPOConfig(beta=config.beta, num_generations=config.num_generations,
                           max_completion_length=config.max_completion_length,
                           **{**PAPER_GRPO, "restore_callback_states_from_checkpoint": True, **common})
        trainer = CadaRLTrainer(model=source, reward_funcs=reward_funcs or [cada_reward], args=targs,
                                train_dataset=dataset, processing_class=tokenizer, peft_config=_peft(config),
                                baseline=config.baseline, baseline_rate=config.baseline_rate)
    else:
        from trl import GRPOConfig, GRPOTrainer

        from cada.judges.reward import format_reward, safety_reward

        targs = GRPOConfig(beta=config.beta, num_generations=config.num_generations,
                           max_completion_length=config.max_completion_length, **common)
        trainer = GRPOTrainer(model=source, reward_funcs=reward_funcs or [safety_reward, format_reward],
                              args=targs, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=_peft(config))
    return trainer


def _trim_train_log(path: Path, step: int) -> None:
    """Keep only the log rows of steps up to ``step`` (where a resumed run starts again; 0 for a fresh one): the
    steps after the checkpoint are trained, and logged, again, and the end-of-training row is written at the end."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            row = json.loads(line)
        except ValueError:  # a line torn by the kill
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step and "train_runtime" not in row and step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _quiet_progress(trainer, output: Path) -> None:
    """Swap transformers' tqdm bar, which also prints every log dict to stdout, for the rich bar every cada stage
    shows (with the latest loss); the log dicts go to ``output/train_log.jsonl`` (one JSON object per line)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from cada.models.generate import progress_bar

    class RichProgress(TrainerCallback):
        bar = task = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                _trim_train_log(output / "train_log.jsonl", state.global_step)
                # not tied to args.disable_tqdm: that follows the transformers log level, which cada's CLI lowers
                self.bar = progress_bar()
                self.bar.start()
                self.task = self.bar.add_task("training", total=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))}}
            with (output / "train_log.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if self.bar is not None and isinstance(logs.get("loss"), (int, float)):
                self.bar.update(self.task, description=f"training (loss {logs['loss']:.3g})")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(RichProgress())


def _freeze_below(model, top: int) -> None:
    """Train only the top ``top`` decoder layers and the final norm (embeddings and lower layers frozen)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise CadaError("top_layers needs a decoder with model.layers (Llama-style); use lora_r or full training")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[-top:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    norm = getattr(model.model, "norm", None)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)


def _save(trainer, tokenizer, output: Path, config: TrainConfig, info: dict, trust_remote_code: bool = False
          ) -> Path:
    """Save the trained model; returns the folder to pass as ``--model``: ``<output>/model``, or with LoRA and
    ``merge=False`` the adapter folder (with the tokenizer; transformers loads the base model under it).

    Under DeepSpeed ZeRO-3 or FSDP every rank takes part (``Trainer.save_model`` gathers the shards); a LoRA adapter
    saved that way is then merged on the main process from the saved files."""
    import torch

    acc = trainer.accelerator
    lora = config.lora_r > 0
    model_dir = output / ("adapter" if lora and not config.merge else "model")
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        trainer.save_model(str(output / "adapter" if lora else model_dir))  # collective: all ranks
        acc.wait_for_everyone()
        if acc.is_main_process:
            if lora and config.merge:
                from peft import AutoPeftModelForCausalLM

                dtype = torch.bfloat16 if bf16_native() else torch.float32
                merged = AutoPeftModelForCausalLM.from_pretrained(
                    str(output / "adapter"), dtype=dtype, device_map=None,
                    trust_remote_code=trust_remote_code).merge_and_unload()
                merged.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
    elif acc.is_main_process:
        model = acc.unwrap_model(trainer.model)
        if hasattr(model, "peft_config"):
            model.save_pretrained(output / "adapter")
            if config.merge:
                model = model.merge_and_unload()
            else:
                tokenizer.save_pretrained(output / "adapter")
        if not hasattr(model, "peft_config"):
            if model.dtype == torch.float32 and bf16_native():
                model = model.to(torch.bfloat16)  # trained with float32 weights; saved at inference precision
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
    acc.wait_for_everyone()
    if acc.is_main_process:
        (output / "train_info.json").write_text(json.dumps({**info, "config": config.model_dump()}, indent=2))
        log.info("trained %s in %.0f s -> %s", config.method, info["train_seconds"], model_dir)
    return model_dir
