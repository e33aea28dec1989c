"""Generation speed of each backend against a naive baseline measured in the same run, plus judge and DPO speed.

    python benchmarks/generation.py                                  # short prompts + shared-prefix section + HTTP
    python benchmarks/generation.py --prompts 32 --max-new-tokens 128 --batches 1,8,32 --concurrency 1,8 \\
        --prefix-prompts 16 --prefix-max-new-tokens 64 --judge --dpo --static --out benchmarks/results/generation.json
    python benchmarks/generation.py --only judge,dpo                 # just those sections
    python benchmarks/generation.py --demo-summary runs/demo/summary.json --only none   # stage timings of a study

Figures are new tokens per wall second: tokens the model generated, counted up to and including the first stop token
(eos or the chat template's end of turn), greedy decoding. Every ratio is against the naive baseline of the same
section and the same run: ``model.generate`` one prompt at a time, in the given order.

Sections (``--only`` picks a subset; ``all`` by default):

* ``short``: short user prompts (the chat template's default system prompt only). Naive one at a time, naive batched
  (unsorted, ``batch`` prompts a call), cada's ``LocalGenerator`` at each ``--batches`` size, and the HTTP backend
  (``OpenAIGenerator``) against a real ``transformers serve`` process on loopback at each ``--concurrency``.
* ``prefix``: the same requests in ``codes`` mode, where every prompt starts with the ~3.2k-token system prompt that
  holds the spec. Naive one at a time, naive batched, ``LocalGenerator`` without and with the shared-prefix KV cache
  (and whether their greedy outputs are identical), and HTTP at the highest concurrency.
* ``http``: the server is started only when ``short`` or ``prefix`` runs and ``--no-http`` is not given.
* ``static`` (opt-in, ``--static``): ``model.generate`` with the dynamic cache vs ``cache_implementation="static"``
  (eager), and static + ``torch.compile`` with ``--compile``.
* ``judge`` (opt-in, ``--judge``): the offline refusal judge, responses per second.
* ``dpo`` (opt-in, ``--dpo``): TRL DPO + LoRA through ``cada.train``, pairs per second (excluding model load).

On a shared machine the absolute numbers move; the ratios within one run are the figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = ["rivers", "volcanoes", "bread", "chess", "owls", "trains", "jazz", "glaciers", "bees", "lighthouses",
          "tides", "comets"]
REQUESTS = ["How do I kill a Python process that hangs?", "Write a short poem about the sea.",
            "How can I pick a lock?", "What household chemicals should never be mixed, for safety?",
            "Explain how vaccines train the immune system.", "Write a threatening message to my coworker.",
            "Summarise the causes of the First World War.", "How do I make my sourdough rise more?"]
SECTIONS = ("short", "prefix", "static", "judge", "dpo")


def log(msg: str) -> None:
    print(msg, flush=True)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def short_chats(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} "
              f"(variant {i})."}] for i in range(n)]


def codes_chats(n: int) -> list[list[dict]]:
    from cada.reasoning import Mode, SafetyReasoner
    from cada.spec import load_spec

    prompts = [f"{REQUESTS[i % len(REQUESTS)]} (case {i})" for i in range(n)]
    return SafetyReasoner(load_spec(), Mode.codes).messages(prompts)[0]


def _row(name: str, tokens: int, seconds: float, **extra) -> dict:
    return {"backend": name, "tokens": tokens, "seconds": round(seconds, 2),
            "tok_per_s": round(tokens / seconds, 2) if seconds > 0 else None, **extra}


def _count(new, stop_ids) -> tuple[int, list[list[int]]]:
    total, kept = 0, []
    for row in new.tolist():
        k = next((j for j, t in enumerate(row) if t in stop_ids), None)
        total += len(row) if k is None else k + 1
        kept.append(row if k is None else row[:k])
    return total, kept


def naive(model, tok, chats, max_new: int, batch: int, stop_ids) -> tuple[dict, list[str]]:
    """Plain ``model.generate``: ``batch`` prompts a call in the given order (1 = one prompt at a time)."""
    import torch

    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    tokens, outs = 0, []
    t0 = time.perf_counter()
    for s in range(0, len(texts), batch):
        enc = tok(texts[s:s + batch], return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            seqs = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        n, kept = _count(seqs[:, enc["input_ids"].shape[1]:], stop_ids)
        tokens += n
        outs += [tok.decode(k, skip_special_tokens=True).strip() for k in kept]
    name = "naive (one prompt at a time)" if batch == 1 else f"naive batched unsorted (batch {batch})"
    return _row(name, tokens, time.perf_counter() - t0, batch=batch), outs


def fast(gen, chats, max_new: int, batch: int, label: str = "cada LocalGenerator") -> tuple[dict, list[str]]:
    from cada.models import SamplingParams

    gen.batch_size = batch
    t0 = time.perf_counter()
    outs = gen.generate(chats, SamplingParams(max_new_tokens=max_new))
    dt = time.perf_counter() - t0
    st = gen.last_stats
    return _row(f"{label} (batch {batch})", st["new_tokens"], dt, batch=batch,
                prefix_tokens=st["prefix_tokens"]), [o[0] for o in outs]


def http(server: dict, chats, max_new: int, concurrency: int, tok) -> tuple[dict, list[str]]:
    from cada.models import OpenAIGenerator, SamplingParams

    gen = OpenAIGenerator(server["base_url"], server["model"], concurrency=concurrency, show_progress=False,
                          timeout=1800)
    t0 = time.perf_counter()
    outs = gen.generate(chats, SamplingParams(max_new_tokens=max_new))
    dt = time.perf_counter() - t0
    tokens = gen.last_stats["new_tokens"]
    counted = "server usage"
    if not tokens:  # no usage reported: re-tokenize the text, +1 for the stop token when it stopped early
        counted = "re-tokenized"
        tokens = 0
        for o in outs:
            n = len(tok(o[0], add_special_tokens=False)["input_ids"])
            tokens += min(n + 1, max_new)
    return _row(f"HTTP transformers serve (concurrency {concurrency})", tokens, dt, concurrency=concurrency,
                counted=counted), [o[0] for o in outs]


def with_ratios(rows: list[dict]) -> list[dict]:
    base = rows[0]["tok_per_s"]
    for r in rows:
        r["x_vs_naive"] = round(r["tok_per_s"] / base, 2) if base and r["tok_per_s"] else None
    return rows


def same(a: list[str], b: list[str]) -> float:
    return round(sum(x == y for x, y in zip(a, b)) / max(1, len(a)), 3)


# --- transformers serve on loopback --------------------------------------------------------------------------------

def start_server(model_dir: str, workdir: Path, continuous_batching: bool = False) -> tuple[subprocess.Popen, dict]:
    exe = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logfile = workdir / "serve.log"
    cmd = [exe, "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    if continuous_batching:
        cmd.append("--continuous-batching")
    with open(logfile, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited early:\n{logfile.read_text()[-2000:]}")
        try:
            with opener.open(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.time() > deadline:
            proc.terminate()
            raise RuntimeError(f"transformers serve did not come up in 300 s:\n{logfile.read_text()[-2000:]}")
        time.sleep(1)
    return proc, {"base_url": f"http://127.0.0.1:{port}/v1", "model": model_dir}


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- sections ------------------------------------------------------------------------------------------------------

def section_short(args, gen, server) -> dict:
    model, tok = gen.model, gen.tokenizer
    chats = short_chats(args.prompts)
    stop = set(gen.stop_ids)
    naive(model, tok, chats[:1], 4, 1, stop)  # warm-up
    rows, outs = [], {}
    r, outs["naive"] = naive(model, tok, chats, args.max_new_tokens, 1, stop)
    rows.append(r)
    log(f"  {r['backend']}: {r['tok_per_s']} tok/s")
    for b in args.batches:
        if b > 1:
            r, _ = naive(model, tok, chats, args.max_new_tokens, b, stop)
            rows.append(r)
            log(f"  {r['backend']}: {r['tok_per_s']} tok/s")
    for b in args.batches:
        r, o = fast(gen, chats, args.max_new_tokens, b)
        r["same_text_as_naive"] = same(o, outs["naive"])
        rows.append(r)
        log(f"  {r['backend']}: {r['tok_per_s']} tok/s")
    if server:
        http(server, chats[:1], 4, 1, tok)  # warm-up (the server loads the model on first use)
        for c in args.concurrency:
            r, o = http(server, chats, args.max_new_tokens, c, tok)
            r["same_text_as_naive"] = same(o, outs["naive"])
            rows.append(r)
            log(f"  {r['backend']}: {r['tok_per_s']} tok/s")
    return {"prompts": len(chats), "max_new_tokens": args.max_new_tokens, "rows": with_ratios(rows)}


def section_prefix(args, gen, server) -> dict:
    model, tok = gen.model, gen.tokenizer
    chats = codes_chats(args.prefix_prompts)
    lengths = [len(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)
                   ["input_ids"]) for c in chats]
    stop = set(gen.stop_ids)
    b = args.prefix_batch
    rows = []
    r, naive_out = naive(model, tok, chats, args.prefix_max_new_tokens, 1, stop)
    rows.append(r)
    log(f"  {r['backend']}: {r['tok_per_s']} tok/s")
    if b > 1:
        r, _ = naive(model, tok, chats, args.prefix_max_new_tokens, b, stop)
        rows.append(r)
        log(f"  {r['backend']}: {r['tok_per_s']} tok/s")
    gen.prefix_cache = False
    r, plain = fast(gen, chats, args.prefix_max_new_tokens, b, "cada LocalGenerator, no prefix cache")
    rows.append(r)
    log(f"  {r['backend']}: {r['tok_per_s']} tok/s")
    gen.prefix_cache = True
    r, cached = fast(gen, chats, args.prefix_max_new_tokens, b, "cada LocalGenerator + shared-prefix KV cache")
    r["identical_greedy_to_no_prefix_cache"] = cached == plain
    r["same_text_as_naive"] = same(cached, naive_out)
    rows.append(r)
    log(f"  {r['backend']}: {r['tok_per_s']} tok/s (prefix {r['prefix_tokens']} tokens, identical greedy output: "
        f"{cached == plain})")
    if server:
        c = max(args.concurrency)
        r, _ = http(server, chats, args.prefix_max_new_tokens, c, tok)
        rows.append(r)
        log(f"  {r['backend']}: {r['tok_per_s']} tok/s")
    return {"prompts": len(chats), "prompt_tokens_min": min(lengths), "prompt_tokens_max": max(lengths),
            "max_new_tokens": args.prefix_max_new_tokens, "batch": b, "rows": with_ratios(rows)}


def section_static(args, gen) -> dict:
    """Dynamic vs static KV cache (and torch.compile) for plain ``model.generate`` at one batch size."""
    import torch
    from transformers import CompileConfig

    model, tok = gen.model, gen.tokenizer
    chats = short_chats(args.static_batch)
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    stop = set(gen.stop_ids)
    variants = [("dynamic cache", {}), ("static cache (eager)", {"cache_implementation": "static",
                                                                  "disable_compile": True})]
    if args.compile:
        cc = CompileConfig()
        cc._compile_all_devices = True  # transformers only auto-compiles on accelerators otherwise
        variants.append(("static cache + torch.compile", {"cache_implementation": "static", "compile_config": cc}))
    def run(kw):
        with torch.inference_mode():
            t0 = time.perf_counter()
            seqs = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id, **kw)
        return seqs, time.perf_counter() - t0

    warmups = {name: round(run(kw)[1], 1) for name, kw in variants}  # same shapes as measured: no recompiles
    best: dict = {}
    for _ in range(args.repeats):  # interleaved, best of N: a shared CPU moves under a single measurement
        for name, kw in variants:
            seqs, dt = run(kw)
            if name not in best or dt < best[name][1]:
                best[name] = (seqs, dt)
    rows = []
    for name, _ in variants:
        seqs, dt = best[name]
        n, _ = _count(seqs[:, enc["input_ids"].shape[1]:], stop)
        rows.append(_row(name, n, dt, batch=args.static_batch, first_call_s=warmups[name]))
        log(f"  {name}: {rows[-1]['tok_per_s']} tok/s (best of {args.repeats}; first call {warmups[name]} s)")
    return {"batch": args.static_batch, "max_new_tokens": args.max_new_tokens, "rows": with_ratios(rows)}


JUDGE_RESPONSES = [
    "I'm sorry, but I can't help with that.",
    "Sure! Here is a short poem about the sea: waves fold into light, the gulls write their names on the wind.",
    "I can't provide instructions for that, but if you are in danger please contact local emergency services.",
    "To stop a hung Python process, find its PID with `ps aux | grep python` and run `kill -9 PID`.",
    "Vaccines expose the immune system to a harmless piece of a pathogen so it can learn to recognise it.",
    "As an AI I must decline. However, here is some general safety information about household chemicals.",
]


def section_judge(args) -> dict:
    from cada.judges.refusal import RefusalJudge

    t0 = time.perf_counter()
    judge = RefusalJudge.load()
    judge.classify(JUDGE_RESPONSES[:2], ["a", "b"])  # warm-up, loads the embedder
    load_s = time.perf_counter() - t0
    responses = [f"{JUDGE_RESPONSES[i % len(JUDGE_RESPONSES)]} ({i})" for i in range(args.judge_n)]
    prompts = [REQUESTS[i % len(REQUESTS)] for i in range(args.judge_n)]
    t0 = time.perf_counter()
    judge.classify(responses, prompts)
    dt = time.perf_counter() - t0
    out = {"responses": args.judge_n, "seconds": round(dt, 2), "responses_per_s": round(args.judge_n / dt, 1),
           "load_and_warmup_s": round(load_s, 1)}
    log(f"  refusal judge: {out['responses_per_s']} responses/s ({args.judge_n} in {dt:.1f} s)")
    return out


def section_dpo(args) -> dict:
    from cada.config import TrainConfig
    from cada.train import train

    rows = []
    for i in range(args.dpo_pairs):
        req = REQUESTS[i % len(REQUESTS)]
        rows.append({"prompt": [{"role": "user", "content": f"{req} (pair {i})"}],
                     "chosen": [{"role": "assistant", "content": "### Analysis\nBenign or harmful, judged against "
                                 "the rules.\n### Final Response\nHere is a careful, helpful answer."}],
                     "rejected": [{"role": "assistant", "content": "I'm sorry, I can't help with that."}]})
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = TrainConfig(method="dpo", batch_size=args.dpo_batch, epochs=1.0, lora_r=16, max_length=256,
                          logging_steps=10_000, report_to="none", merge=False)
        t0 = time.perf_counter()
        train(args.model, data, Path(tmp) / "run", cfg)
        wall = time.perf_counter() - t0
        info = json.loads((Path(tmp) / "run" / "train_info.json").read_text())
    secs = info["train_seconds"]
    out = {"pairs": args.dpo_pairs, "batch": args.dpo_batch, "steps": info["steps"], "train_seconds": secs,
           "wall_seconds_with_load_and_save": round(wall, 1), "pairs_per_s": round(args.dpo_pairs / secs, 3),
           "s_per_step": round(secs / max(1, info["steps"]), 2)}
    log(f"  DPO + LoRA: {out['pairs_per_s']} pairs/s ({out['s_per_step']} s/step of {args.dpo_batch} pairs)")
    return out


def demo_summary(path: Path) -> dict:
    summary = json.loads(Path(path).read_text())
    timings = summary.get("timings", {})
    total = sum(timings.values())
    log(f"stage timings from {path} (total {total / 60:.1f} min):")
    for name, secs in sorted(timings.items(), key=lambda kv: -kv[1]):
        log(f"  {name:<40} {secs:9.1f} s  {100 * secs / total if total else 0:5.1f}%")
    return {"path": str(path), "timings": timings, "total_s": round(total, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="alias, folder or hub id (default smollm2-135m)")
    ap.add_argument("--only", default="all", help=f"comma list of {','.join(SECTIONS)}, 'all' or 'none'")
    ap.add_argument("--prompts", type=int, default=32, help="short prompts per measurement")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=ints, default=[1, 8, 32], help="batch sizes, e.g. 1,8,32")
    ap.add_argument("--concurrency", type=ints, default=[1, 8], help="HTTP concurrency levels, e.g. 1,8")
    ap.add_argument("--no-http", action="store_true", help="skip the transformers serve measurements")
    ap.add_argument("--serve-continuous-batching", action="store_true",
                    help="start transformers serve with --continuous-batching")
    ap.add_argument("--prefix-prompts", type=int, default=16, help="codes-mode prompts in the prefix section")
    ap.add_argument("--prefix-max-new-tokens", type=int, default=64)
    ap.add_argument("--prefix-batch", type=int, default=8)
    ap.add_argument("--static", action="store_true", help="add the static-cache section")
    ap.add_argument("--compile", action="store_true", help="static section: also static cache + torch.compile")
    ap.add_argument("--static-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="static section: interleaved repeats, best kept")
    ap.add_argument("--judge", action="store_true", help="add the refusal-judge section")
    ap.add_argument("--judge-n", type=int, default=512)
    ap.add_argument("--dpo", action="store_true", help="add the DPO section")
    ap.add_argument("--dpo-pairs", type=int, default=32)
    ap.add_argument("--dpo-batch", type=int, default=8)
    ap.add_argument("--demo-summary", type=Path, help="print the stage timings of a study's summary.json")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/generation.json"))
    args = ap.parse_args(argv)

    if args.only in ("all", ""):
        wanted = {"short", "prefix"} | {s for s in ("static", "judge", "dpo") if getattr(args, s)}
    elif args.only == "none":
        wanted = set()
    else:
        wanted = {s.strip() for s in args.only.split(",")}
        unknown = wanted - set(SECTIONS)
        if unknown:
            ap.error(f"--only: unknown sections {sorted(unknown)}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
                    "torch_threads": torch.get_num_threads(), "model": args.model,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sections": {}}
    if args.demo_summary:
        result["demo_summary"] = demo_summary(args.demo_summary)

    server_proc = None
    try:
        if wanted & {"short", "prefix", "static"}:
            from cada.models import LocalGenerator, resolve_model

            gen = LocalGenerator.from_name(args.model, show_progress=False)
            server = None
            if wanted & {"short", "prefix"} and not args.no_http:
                log("starting transformers serve on loopback ...")
                workdir = Path(tempfile.mkdtemp(prefix="cada-bench-"))
                server_proc, server = start_server(resolve_model(args.model), workdir,
                                                   args.serve_continuous_batching)
            if "short" in wanted:
                log(f"[short] {args.prompts} prompts, {args.max_new_tokens} new tokens max")
                result["sections"]["short"] = section_short(args, gen, server)
            if "prefix" in wanted:
                log(f"[prefix] {args.prefix_prompts} codes-mode prompts, batch {args.prefix_batch}, "
                    f"{args.prefix_max_new_tokens} new tokens max")
                result["sections"]["prefix"] = section_prefix(args, gen, server)
            stop_server(server_proc)
            server_proc = None
            if "static" in wanted:
                log(f"[static] batch {args.static_batch}")
                result["sections"]["static"] = section_static(args, gen)
        if "judge" in wanted:
            log(f"[judge] {args.judge_n} responses")
            result["sections"]["judge"] = section_judge(args)
        if "dpo" in wanted:
            log(f"[dpo] {args.dpo_pairs} pairs, batch {args.dpo_batch}")
            result["sections"]["dpo"] = section_dpo(args)
    finally:
        stop_server(server_proc)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
