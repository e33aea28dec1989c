"""One bounded GPU check: generation tok/s at batch 256 and DPO pairs/s on the embedded model, bf16, one GPU.

    python benchmarks/gpu_check.py --model PATH --out $OUT/gpu_check.json          # on the GPU machine
    python benchmarks/gpu_check.py --export-skeleton gpu-model                     # here: config + tokenizer only
    python benchmarks/gpu_check.py --model tiny-random --allow-cpu --batch 4 ...          # CPU smoke test of the script

Measures, in this order, each only while the time budget (``--time-budget``, default 540 s) allows:

1. ``hf``: plain ``model.generate`` on all ``--batch`` prompts at once (left padding, unsorted), greedy;
2. ``cada``: cada's ``LocalGenerator`` fast path (length-sorted, end-of-turn stop, batch sized from free memory);
3. ``prefix``: ``--prefix-prompts`` codes-mode prompts (~3.2k-token shared system prompt), ``LocalGenerator``
   without and with the shared-prefix KV cache, and how many greedy outputs agree (bf16: not asserted);
4. ``dpo``: TRL DPO + LoRA through ``cada.train`` (bf16), ``--dpo-steps`` steps of ``--dpo-batch`` pairs;
   ``dpo_full``: full fine-tuning DPO (float32 weights, bf16 autocast), half as many steps, and the share of
   weights that moved;
5. ``vllm``: cada's ``VLLMGenerator`` (vLLM offline engine) on the same prompts, in a child process with its own
   timeout, only when ``vllm`` is importable.

Nothing is downloaded (HF_HUB_OFFLINE=1). The model is ``--model PATH`` (a Hugging Face folder), else the cached
embedded model (``cada.models.resolve_model("smollm2-135m")``). A folder with config + tokenizer but no weights (see
``--export-skeleton``; ~4 MB, where the 517 MB float32 folder cannot travel) gets random bf16 weights first:
throughput does not depend on the weights, except that random weights rarely stop early, so every row runs to
``--max-new-tokens`` (the JSON says ``weights: random``). Results are written after every step, so a run cut short
still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(SRC))

TOPICS = ["rivers", "volcanoes", "bread", "chess", "owls", "trains", "jazz", "glaciers", "bees", "lighthouses",
          "tides", "comets", "maps", "clocks", "deserts", "violins"]
REQUESTS = ["How do I kill a Python process that hangs?", "Write a short poem about the sea.",
            "How can I pick a lock?", "What household chemicals should never be mixed, for safety?",
            "Explain how vaccines train the immune system.", "Write a threatening message to my coworker.",
            "Summarise the causes of the First World War.", "How do I make my sourdough rise more?"]
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def chats(n: int) -> list[list[dict]]:
    """Short requests of varied length (1-4 sentences), so sorting and padding matter as in real batches."""
    out = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        extra = " ".join(f"Mention fact {k} about {t}." for k in range(i % 4))
        out.append([{"role": "user", "content": f"Write a short paragraph about {t} (variant {i}). {extra}".strip()}])
    return out


def codes_chats(n: int) -> list[list[dict]]:
    from cada.reasoning import Mode, SafetyReasoner
    from cada.spec import load_spec

    prompts = [f"{REQUESTS[i % len(REQUESTS)]} (case {i})" for i in range(n)]
    return SafetyReasoner(load_spec(), Mode.codes).messages(prompts)[0]


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, need: float, name: str, result: dict) -> bool:
        if self.left() >= need:
            return True
        result["sections"][name] = {"skipped": f"time budget: {self.left():.0f} s left, ~{need:.0f} s needed"}
        log(f"{name}: skipped, {self.left():.0f} s left")
        return False


def save(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    result["elapsed_s"] = round(time.perf_counter() - T0, 1)
    out.write_text(json.dumps(result, indent=2) + "\n")


def has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def resolve(model: str | None) -> Path:
    if model:
        path = Path(model).expanduser()
        if path.is_dir():
            return path.resolve()
        from cada.models.load import resolve_model  # an alias such as tiny-random

        return Path(resolve_model(model))
    from cada.models.load import resolve_model

    return Path(resolve_model("smollm2-135m"))


def materialize_random(skeleton: Path, dtype) -> Path:
    """A loadable folder with random weights for a config + tokenizer folder (throughput only)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = Path(tempfile.mkdtemp(prefix="cada-gpu-model-"))
    config = AutoConfig.from_pretrained(skeleton)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(skeleton).save_pretrained(target)
    return target


def export_skeleton(dest: Path, model: str | None) -> None:
    from transformers import AutoConfig, AutoTokenizer

    src = resolve(model)
    dest.mkdir(parents=True, exist_ok=True)
    AutoConfig.from_pretrained(src).save_pretrained(dest)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    gen_cfg = src / "generation_config.json"
    if gen_cfg.is_file():
        (dest / "generation_config.json").write_text(gen_cfg.read_text())
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"wrote {dest} ({size / 2**20:.1f} MiB: config, tokenizer, no weights)")


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def count_new(new, stop_ids) -> int:
    total = 0
    for row in new.tolist():
        k = next((j for j, t in enumerate(row) if t in stop_ids), None)
        total += len(row) if k is None else k + 1
    return total


def row(tokens: int, seconds: float, **extra) -> dict:
    return {"tokens": tokens, "seconds": round(seconds, 3), "tok_per_s": round(tokens / seconds, 1), **extra}


# --- sections ------------------------------------------------------------------------------------------------------

def section_hf(model, tok, prompts, max_new, stop_ids, device) -> dict:
    import torch

    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(device)
    kw = dict(do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        model.generate(**{k: v[:8] for k, v in enc.items()}, max_new_tokens=8, **kw)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        seqs = model.generate(**enc, max_new_tokens=max_new, **kw)
        sync(device)
        dt = time.perf_counter() - t0
    return row(count_new(seqs[:, enc["input_ids"].shape[1]:], stop_ids), dt, batch=len(prompts),
               padded_prompt_len=int(enc["input_ids"].shape[1]))


def section_cada(model, tok, prompts, max_new, batch, device) -> dict:
    from cada.models import LocalGenerator, SamplingParams

    gen = LocalGenerator(model, tok, batch_size=batch, max_batch_size=batch, show_progress=False)
    gen.generate(prompts[:8], SamplingParams(max_new_tokens=8))  # warm-up
    sync(device)
    t0 = time.perf_counter()
    gen.generate(prompts, SamplingParams(max_new_tokens=max_new))
    sync(device)
    dt = time.perf_counter() - t0
    st = gen.last_stats
    return row(st["new_tokens"], dt, batch_rows=st["batch_rows"], batches=st["batches"],
               oom_retries=st["oom_retries"])


def section_prefix(model, tok, n, max_new, device) -> dict:
    from cada.models import LocalGenerator, SamplingParams

    prompts = codes_chats(n)
    out, texts = {}, {}
    for name, on in (("no_prefix_cache", False), ("prefix_cache", True)):
        gen = LocalGenerator(model, tok, batch_size=n, max_batch_size=n, show_progress=False, prefix_cache=on)
        gen.generate(prompts[:2], SamplingParams(max_new_tokens=4))  # warm-up
        sync(device)
        t0 = time.perf_counter()
        texts[name] = gen.generate(prompts, SamplingParams(max_new_tokens=max_new))
        sync(device)
        dt = time.perf_counter() - t0
        out[name] = row(gen.last_stats["new_tokens"], dt, prefix_tokens=gen.last_stats["prefix_tokens"],
                        batch_rows=gen.last_stats["batch_rows"])
    agree = sum(a == b for a, b in zip(texts["no_prefix_cache"], texts["prefix_cache"])) / len(prompts)
    out.update(prompts=n, greedy_agreement=round(agree, 3),
               speedup=round(out["prefix_cache"]["tok_per_s"] / out["no_prefix_cache"]["tok_per_s"], 2))
    return out


def dpo_pairs(n: int) -> list[dict]:
    pairs = []
    for i in range(n):
        req = REQUESTS[i % len(REQUESTS)]
        pairs.append({"prompt": [{"role": "user", "content": f"{req} (pair {i})"}],
                      "chosen": [{"role": "assistant", "content": "### Analysis\nChecked against the rules: "
                                  f"benign.\n### Final Response\nA careful, helpful answer number {i}."}],
                      "rejected": [{"role": "assistant", "content": "I'm sorry, I can't help with that."}]})
    return pairs


def section_dpo_full(model_dir: Path, steps: int, batch: int) -> dict:
    """Full fine-tuning DPO at a small rate: float32 weights under bf16 autocast, so the updates land (in bf16
    weights an lr-1e-6 Adam step rounds away). Reports the weights dtype and how much of the model moved."""
    import torch
    from transformers import AutoModelForCausalLM

    from cada.config import TrainConfig
    from cada.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(method="dpo", batch_size=batch, epochs=1.0, lora_r=0, learning_rate=1e-5, warmup_ratio=0,
                          max_length=512, report_to="none", logging_steps=max(1, steps))
        t0 = time.perf_counter()
        out = train(str(model_dir), dpo_pairs(steps * batch), Path(tmp) / "run", cfg)
        wall = time.perf_counter() - t0
        info = json.loads((Path(tmp) / "run" / "train_info.json").read_text())
        before = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
        trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        after = trained.state_dict()
        saved_dtype = trained.config.dtype if isinstance(trained.config.dtype, torch.dtype) else torch.float32
        # compared at the saved precision: a float32 base against bf16-saved weights would differ by rounding alone
        moved = sum(int((before[k].to(saved_dtype) != after[k].to(saved_dtype)).sum()) for k in before if k in after)
        total = sum(before[k].numel() for k in before if k in after)
        saved = str(trained.config.dtype).replace("torch.", "")
    return {"pairs": steps * batch, "steps": info["steps"], "train_seconds": info["train_seconds"],
            "wall_seconds_with_load_and_save": round(wall, 1), "weights_dtype": info.get("weights_dtype"),
            "bf16_autocast": info.get("bf16_autocast"), "saved_dtype": saved, "lr": cfg.learning_rate,
            "share_of_weights_changed": round(moved / max(1, total), 4), "train_loss": info.get("train_loss")}


def section_dpo(model_dir: Path, steps: int, batch: int) -> dict:
    from cada.config import TrainConfig
    from cada.train import train

    pairs = dpo_pairs(steps * batch)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(method="dpo", batch_size=batch, epochs=1.0, lora_r=16, max_length=512,
                          report_to="none", merge=False, logging_steps=max(1, steps))
        t0 = time.perf_counter()
        train(str(model_dir), pairs, Path(tmp) / "run", cfg)
        wall = time.perf_counter() - t0
        info = json.loads((Path(tmp) / "run" / "train_info.json").read_text())
    secs = info["train_seconds"]
    return {"pairs": len(pairs), "batch": batch, "steps": info["steps"], "train_seconds": secs,
            "wall_seconds_with_load_and_save": round(wall, 1), "pairs_per_s": round(len(pairs) / secs, 2),
            "s_per_step": round(secs / max(1, info["steps"]), 2), "lora_r": 16, "max_length": 512,
            "note": "cada.train: TRL DPOTrainer, bf16, gradient checkpointing on CUDA"}


def vllm_child(args) -> None:
    """Runs in a child process (own CUDA context, killable on timeout); prints one JSON line."""
    from cada.models.generate import SamplingParams
    from cada.models.vllm_backend import VLLMGenerator

    t0 = time.perf_counter()
    gen = VLLMGenerator(args.vllm_child, dtype="bfloat16", gpu_memory_utilization=args.vllm_memory,
                        max_model_len=4096, show_progress=False)
    startup = time.perf_counter() - t0
    prompts = chats(args.batch)
    gen.generate(prompts[:8], SamplingParams(max_new_tokens=8))
    t0 = time.perf_counter()
    gen.generate(prompts, SamplingParams(max_new_tokens=args.max_new_tokens))
    dt = time.perf_counter() - t0
    res = row(gen.last_stats["new_tokens"], dt, batch=args.batch, startup_s=round(startup, 1))
    if args.prefix_prompts:
        p = codes_chats(args.prefix_prompts)
        t0 = time.perf_counter()
        gen.generate(p, SamplingParams(max_new_tokens=args.prefix_max_new_tokens))
        dt = time.perf_counter() - t0
        res["prefix"] = row(gen.last_stats["new_tokens"], dt, prompts=len(p))
    print("VLLM_RESULT " + json.dumps(res), flush=True)


def section_vllm(args, model_dir: Path, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--vllm-child", str(model_dir), "--batch", str(args.batch),
           "--max-new-tokens", str(args.max_new_tokens), "--prefix-prompts", str(args.prefix_prompts),
           "--prefix-max-new-tokens", str(args.prefix_max_new_tokens), "--vllm-memory", str(args.vllm_memory)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or "")[-1500:] if isinstance(e.stdout, str) else ""
        return {"error": f"timed out after {timeout:.0f} s", "output_tail": tail}
    for line in proc.stdout.splitlines():
        if line.startswith("VLLM_RESULT "):
            return json.loads(line[len("VLLM_RESULT "):])
    return {"error": f"exit {proc.returncode}", "output_tail": (proc.stdout + proc.stderr)[-2500:]}


# --- main ----------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", help="HF folder (weights optional, see above) or alias; default: the cached "
                    "embedded model")
    ap.add_argument("--batch", type=int, default=256, help="prompts in the generation measurements")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prefix-prompts", type=int, default=64, help="codes-mode prompts (0: skip the prefix step)")
    ap.add_argument("--prefix-max-new-tokens", type=int, default=64)
    ap.add_argument("--dpo-steps", type=int, default=8)
    ap.add_argument("--dpo-batch", type=int, default=32)
    ap.add_argument("--skip", default="", help="comma list of steps to skip: hf,cada,prefix,dpo,dpo_full,vllm")
    ap.add_argument("--vllm-memory", type=float, default=0.5, help="vLLM gpu_memory_utilization")
    ap.add_argument("--vllm-timeout", type=float, default=300)
    ap.add_argument("--time-budget", type=float, default=540, help="seconds for the whole run (default 540)")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU in float32 (smoke test only)")
    ap.add_argument("--export-skeleton", type=Path, metavar="DIR",
                    help="write config + tokenizer of --model (no weights) to DIR and exit")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    ap.add_argument("--vllm-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.export_skeleton:
        export_skeleton(args.export_skeleton, args.model)
        return 0
    if args.vllm_child:
        vllm_child(args)
        return 0

    import importlib.util

    import torch

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("no CUDA device: this check is for a GPU machine (use --allow-cpu for a smoke test)", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    budget = Budget(args.time_budget)
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    for pkg in ("trl", "peft", "vllm"):
        versions[pkg] = "installed" if importlib.util.find_spec(pkg) else None
    result: dict = {"device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
                    "dtype": str(dtype).replace("torch.", ""), "versions": versions, "args": vars(args) | {
                        "out": str(args.out), "export_skeleton": None}, "sections": {}}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        result["gpu_memory_gib"] = {"free": round(free / 2**30, 1), "total": round(total / 2**30, 1)}
    log(f"device {result['device']}, {result['dtype']}, budget {args.time_budget:.0f} s")

    source = resolve(args.model)
    result["weights"] = "real"
    if not has_weights(source):
        log(f"{source} has no weights: materializing random {result['dtype']} weights (throughput only)")
        source = materialize_random(source, dtype)
        result["weights"] = "random"
    result["model"] = str(source)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device).eval()
    try:
        from cada.models.generate import end_of_turn_ids

        stop_ids = set(end_of_turn_ids(tok, model))
    except Exception:
        stop_ids = {tok.eos_token_id}
    prompts = chats(args.batch)
    save(result, args.out)

    steps = [("hf", 30, lambda: section_hf(model, tok, prompts, args.max_new_tokens, stop_ids, device)),
             ("cada", 30, lambda: section_cada(model, tok, prompts, args.max_new_tokens, args.batch, device)),
             ("prefix", 40, lambda: section_prefix(model, tok, args.prefix_prompts, args.prefix_max_new_tokens,
                                                   device)),
             ("dpo", 60, lambda: section_dpo(source, args.dpo_steps, args.dpo_batch)),
             ("dpo_full", 60, lambda: section_dpo_full(source, max(2, args.dpo_steps // 2), args.dpo_batch))]
    for name, need, fn in steps:
        if name in skip or (name == "prefix" and args.prefix_prompts <= 0):
            continue
        if not budget.allows(need, name, result):
            continue
        if name in ("dpo", "dpo_full"):  # free the generation model's memory for training
            model.to("cpu")
            if cuda:
                torch.cuda.empty_cache()
        log(f"{name} ...")
        try:
            result["sections"][name] = fn()
        except Exception as e:  # keep going: one failed step should not lose the others
            import traceback

            result["sections"][name] = {"error": f"{type(e).__name__}: {e}",
                                        "traceback": traceback.format_exc()[-2000:]}
        log(f"{name}: {json.dumps(result['sections'][name])[:400]}")
        save(result, args.out)
    sec = result["sections"]
    if "tok_per_s" in sec.get("hf", {}) and "tok_per_s" in sec.get("cada", {}):
        result["cada_vs_hf"] = round(sec["cada"]["tok_per_s"] / sec["hf"]["tok_per_s"], 2)

    if "vllm" not in skip:
        if not versions["vllm"]:
            sec["vllm"] = {"skipped": "vllm is not installed"}
        elif budget.allows(90, "vllm", result):
            import gc

            model.to("cpu")
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()  # what the generation and DPO steps cached goes back to the driver
            timeout = min(args.vllm_timeout, budget.left() - 10)
            log(f"vllm (child process, timeout {timeout:.0f} s) ...")
            sec["vllm"] = section_vllm(args, source, timeout)
            log(f"vllm: {json.dumps(sec['vllm'])[:400]}")
            if "tok_per_s" in sec["vllm"] and "tok_per_s" in sec.get("hf", {}):
                result["vllm_vs_hf"] = round(sec["vllm"]["tok_per_s"] / sec["hf"]["tok_per_s"], 2)
    save(result, args.out)

    print("\n== summary ==")
    for name in ("hf", "cada", "vllm"):
        s = sec.get(name, {})
        if "tok_per_s" in s:
            print(f"generation {name:>5}: {s['tok_per_s']:>10.1f} tok/s  ({s['tokens']} tokens in {s['seconds']} s, "
                  f"batch {args.batch})")
        elif s:
            print(f"generation {name:>5}: {s.get('skipped') or s.get('error')}")
    if "prefix_cache" in sec.get("prefix", {}):
        p = sec["prefix"]
        print(f"prefix cache: {p['no_prefix_cache']['tok_per_s']} -> {p['prefix_cache']['tok_per_s']} tok/s "
              f"(x{p['speedup']}, greedy agreement {p['greedy_agreement']})")
    d = sec.get("dpo", {})
    if "pairs_per_s" in d:
        print(f"DPO + LoRA: {d['pairs_per_s']} pairs/s ({d['steps']} steps of {d['batch']} pairs in "
              f"{d['train_seconds']} s)")
    elif d:
        print(f"DPO: {d.get('skipped') or d.get('error')}")
    print(f"wrote {args.out} in {time.perf_counter() - T0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
