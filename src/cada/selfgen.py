"""Self-generation: the policy samples N safety-reasoning chains per training prompt with the spec in context,
a judge labels each final response, and every chain becomes one JSONL record with its reward; and the policy's
direct answers to bare requests (the benign side of the warm-up and the calibration pass).

Resumable: records are appended a chunk of prompts at a time (all N samples of a prompt together); a restarted
run skips the chunks already complete, never duplicates a record, and samples what an unbroken run would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from cada.config import SelfGenConfig
from cada.errors import CadaError
from cada.models.generate import Generator, SamplingParams, progress_bar
from cada.reasoning import Mode, SafetyReasoner
from cada.records import append_in_chunks, append_records, checkpoint_size, read_records
from cada.spec.schema import Spec

log = logging.getLogger(__name__)


def _prompt_fields(p) -> dict:
    d = p if isinstance(p, dict) else (p.model_dump() if hasattr(p, "model_dump") else asdict(p))
    return {k: d.get(k) for k in ("id", "prompt", "label", "category", "source", "jailbreak")}


def self_generate(prompts: Sequence, generator: Generator, spec: Spec, output: str | Path,
                  config: SelfGenConfig = SelfGenConfig(), judge=None, show_progress: bool = True) -> list[dict]:
    """Generate, judge and reward ``config.n`` chains per prompt into ``output`` (JSONL); returns all records.

    ``prompts`` are pool prompts (objects or dicts with id, prompt, label harmful|benign, category, source).
    ``judge`` has ``classify(responses, prompts) -> [result with .label]`` (default: the offline refusal judge).
    """
    from cada.judges.reward import SAFETY_REWARDS

    if judge is None:
        from cada.judges.refusal import RefusalJudge

        judge = RefusalJudge.load()
    output = Path(output)
    done = read_records(output, repair=True)
    have = {(r["id"], r.get("sample")) for r in done}
    per_prompt: dict[str, int] = {}
    for r in done:
        per_prompt[r["id"]] = per_prompt.get(r["id"], 0) + 1
    items = [_prompt_fields(p) for p in prompts]
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CadaError(f"prompt id {dup!r} appears more than once in the pool: ids must be unique")
    # chunks at fixed places in the whole pool, each sampled with its own seed, so that a resumed run (even one
    # killed halfway through a chunk's append) samples exactly what an unbroken run would: a chunk with any
    # missing sample is generated again whole and only the missing samples are kept
    fixed = [items[i:i + config.chunk_size] for i in range(0, len(items), config.chunk_size)]
    todo = [(no, chunk) for no, chunk in enumerate(fixed)
            if any(per_prompt.get(it["id"], 0) < config.n for it in chunk)]
    short = sum(0 < per_prompt.get(it["id"], 0) < config.n for _, chunk in todo for it in chunk)
    if short:
        log.info("%d prompts have fewer than n=%d samples; generating the missing ones", short, config.n)
    if not todo:
        return done
    reasoner = SafetyReasoner(spec, Mode(config.mode), k=config.k)
    records = list(done)
    t0 = time.perf_counter()
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task(f"self-generating ({config.mode}, n={config.n})", total=len(items),
                            completed=sum(per_prompt.get(it["id"], 0) >= config.n for it in items))

        def answer(no: int, chunk: list[dict]) -> list[dict]:
            params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                                    max_new_tokens=config.max_new_tokens, n=config.n, seed=config.seed + no)
            results = reasoner.run(generator, [it["prompt"] for it in chunk], params)
            flat = [(it, r) for it, rs in zip(chunk, results) for r in rs if (it["id"], r.sample) not in have]
            verdicts = judge.classify([r.response for _, r in flat], [it["prompt"] for it, _ in flat])
            bar.advance(task, sum(per_prompt.get(it["id"], 0) < config.n for it in chunk))
            return [{**it, "mode": r.mode, "sample": r.sample, "raw": r.raw, "reasoning": r.reasoning,
                     "response": r.response, "format_ok": r.format_ok, "judge": v.label,
                     "judge_probs": getattr(v, "probs", None), "reward": SAFETY_REWARDS[it["label"]][v.label],
                     "cited_cases": r.cited_cases, "context_cases": r.context_cases}
                    for (it, r), v in zip(flat, verdicts)]

        for no, chunk in todo:  # each chunk's records appended (and fsynced) before the next starts
            rows = answer(no, chunk)
            append_records(output, rows)
            records += rows
    log.info("self-generation: %d chunks in %.0f s", len(todo), time.perf_counter() - t0)
    return records


def summarize(records: Sequence[dict]) -> dict:
    """Share of samples refused, partly refused (the judge's ``partial``) and well-formatted, and prompts with at
    least one good sample (reward above 0), per label."""
    out: dict = {}
    for label in ("harmful", "benign"):
        rs = [r for r in records if r.get("label") == label]
        if not rs:
            continue
        by_prompt: dict[str, list[dict]] = {}
        for r in rs:
            by_prompt.setdefault(r["id"], []).append(r)
        out[label] = {
            "prompts": len(by_prompt), "samples": len(rs),
            "refused_samples": round(sum(r["judge"] == "refuse" for r in rs) / len(rs), 3),
            "partial_samples": round(sum(r["judge"] == "partial" for r in rs) / len(rs), 3),
            "format_ok_samples": round(sum(bool(r.get("format_ok")) for r in rs) / len(rs), 3),
            "prompts_with_a_good_sample": round(
                sum(any(x["reward"] > 0 for x in v) for v in by_prompt.values()) / len(by_prompt), 3),
        }
    return out


def direct_answers(prompts: list, gen, path: Path, max_new_tokens: int, *, show_progress: bool = True
                   ) -> dict[str, str]:
    """The policy's own greedy answers to bare benign requests (resumable JSONL ``{"id", "response"}``)."""
    done = {r["id"]: r["response"] for r in read_records(path, repair=True)} if path.exists() else {}
    todo = [p for p in prompts if p.id not in done]
    if hasattr(gen, "show_progress"):
        gen.show_progress = show_progress

    def answer(chunk: list) -> list[dict]:
        outs = gen.generate([[{"role": "user", "content": p.prompt}] for p in chunk],
                            SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
        return [{"id": p.id, "response": o[0]} for p, o in zip(chunk, outs)]

    # one batch of the generator between appends: a kill loses at most the batch in flight
    done.update((r["id"], r["response"]) for r in append_in_chunks(path, todo, checkpoint_size(gen), answer))
    return done
