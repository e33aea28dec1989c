"""Does CADA (`cada align --arm cada`) make the embedded model refuse held-back *training-pool* prompts it did not
refuse before, without refusing more benign ones? Base vs the model after each stage, at CPU size.

Results (``experiments/results/``), each from the command under it:

    # align_recipe.json: the early LoRA recipe (original pools)
    python experiments/align_recipe.py --limit 120 --n 2
    # align_pipeline_cpu.json: recipes/align-cada.yaml at about half its sizes (the run folder from `cada align`
    # with the same flags and --output runs/align-cpu64)
    python experiments/align_recipe.py --config recipes/align-cada.yaml --limit 64 --judgement-per-label 300 \
        --warmup-per-label 300 --calibration-per-label 300 --run runs/align-cpu64 --eval-max-new-tokens 128 \
        --out experiments/results/align_pipeline_cpu.json
    # align_pipeline_cpu_config.json: the config as shipped, self-generation on 64 prompts per label
    # (after `cada align --config recipes/align-cada.yaml --limit 64 --output runs/align-cfg64`)
    python experiments/align_recipe.py --config recipes/align-cada.yaml --limit 64 --run runs/align-cfg64 \
        --eval-max-new-tokens 128 --out experiments/results/align_pipeline_cpu_config.json
    # align_pipeline_cpu_full.json: the config at its own sizes
    # (after `MALLOC_ARENA_MAX=2 cada align --config recipes/align-cada.yaml --output runs/align-cfg250`)
    python experiments/align_recipe.py --config recipes/align-cada.yaml --run runs/align-cfg250 \
        --eval-max-new-tokens 128 --out experiments/results/align_pipeline_cpu_full.json

Written to ``--out`` (default ``experiments/results/align_recipe.json``).

Runs `cada align --arm cada` into a run folder (or resumes it: a finished `cada align` run with the same settings
is only evaluated), then answers the held-back prompts (50 harmful + 50 benign by default, never trained on)
greedily with the bare request (mode none: the spec is not in the prompt) for the base model and the model after
each stage (warm-up, DPO, calibration pass). Reports keyword (string-match) and offline-judge refusal rates for
harmful and benign prompts separately, plus the stage timings from the run's summary.

Without --config the run is the early CPU recipe that ``align_recipe.json`` recorded (LoRA r16 warm-up and DPO on
the self-generated prompts, no judgement stage, no calibration pass); with it, an `AlignConfig` YAML such as
recipes/align-cada.yaml, whose sizes the flags given override. The stage timings come from the run's summary
(a resumed run keeps the times its stages took when they ran).

The other experiments import ``write_result``, ``unused_prompts`` and ``refusal_rates`` from this file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def write_result(result: dict, out: str | Path) -> Path:
    """Write an experiment's result JSON (folders made as needed) and say where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return out


def unused_prompts(run: Path, judgement_per_label: int) -> list:
    """The training-pool prompts of an ``align_curve.py`` run that no stage trained on (not in its ``warmup.jsonl``,
    not among the judgement stage's balanced draw), shuffled with a fixed seed: the same order for every experiment."""
    import random

    from cada.data.pools import balanced, read_pool

    if (run / "config.yaml").is_file():
        return _pipeline_unused(run)
    train = read_pool(run / "pool" / "train.jsonl")
    used = {p.id for p in balanced(train, judgement_per_label, 0)}
    used |= {json.loads(line)["id"] for line in (run / "warmup.jsonl").read_text().splitlines()}
    fresh = [p for p in train if p.id not in used]
    random.Random(7).shuffle(fresh)
    return fresh


def _pipeline_unused(run: Path) -> list:
    """For a ``cada align`` run folder: the shipped pools rebuilt with the run's seed and jailbreak share, less its
    held-back prompts, less every prompt a stage drew (``pool/*.jsonl``: self-generation, judgement stage, warm-up,
    calibration pass), less near duplicates of any of those (the pipeline's own overlap test); shuffled with a fixed
    seed."""
    import random

    from cada.config import AlignConfig
    from cada.data import pools as P
    from cada.data.decontam import drop_near_heldout
    from cada.spec import load_spec

    cfg = AlignConfig.from_yaml(run / "config.yaml")
    if cfg.pool.user_pool:
        raise SystemExit(f"{run}: a run on a user pool; unused prompts are drawn from the shipped pools only")
    spec = load_spec(cfg.spec)
    prompts = P.build_pools(jailbreak_share=cfg.pool.jailbreak_share, seed=cfg.seed, spec=spec).prompts
    used = [p for f in sorted((run / "pool").glob("*.jsonl")) for p in P.read_pool(f)]
    ids = {p.id for p in used}
    fresh, _ = drop_near_heldout([p for p in prompts if p.id not in ids], used)
    random.Random(7).shuffle(fresh)
    return fresh


def refusal_rates(model: str, heldout, out_dir: Path, max_new_tokens: int) -> dict:
    from cada.evaluate.run import evaluate
    from cada.judges.refusal import string_match_label
    from cada.models.local import LocalGenerator
    from cada.records import EvalItem, read_records
    from cada.spec import load_spec

    items = [EvalItem(id=p.id, prompt=p.prompt, kind=p.label, category=p.category) for p in heldout]
    gen = LocalGenerator.from_name(model, batch_size=16, show_progress=False)
    t0 = time.perf_counter()
    evaluate(items, gen, load_spec(), out_dir, mode="none", max_new_tokens=max_new_tokens, show_progress=False)
    recs = read_records(out_dir / "records.jsonl")
    res = {"seconds": round(time.perf_counter() - t0, 1)}
    for kind in ("harmful", "benign"):
        rs = [r for r in recs if r["kind"] == kind]
        res[kind] = {"n": len(rs),
                     "keyword_refusal": round(sum(string_match_label(r["response"]) == "refuse" for r in rs) / len(rs), 3),
                     "judge_refusal": round(sum(r["judge"] != "comply" for r in rs) / len(rs), 3)}
    source = {p.id: p.source for p in heldout}
    by: dict[str, list[bool]] = {}
    for r in recs:
        refused = string_match_label(r["response"]) == "refuse"
        by.setdefault(f"{r['kind']}/{source.get(r['id'], '?')}", []).append(refused)
    res["keyword_refusal_by_source"] = {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by.items())}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench-cada")
    ap.add_argument("--limit", type=int, help="training prompts per label (default 120, or the config's)")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="self-generation budget per chain")
    ap.add_argument("--eval-max-new-tokens", type=int, default=160,
                    help="evaluation budget (room for the analysis and the final response)")
    ap.add_argument("--k", type=int, default=4, help="precedents in the self-generation prompt")
    ap.add_argument("--warmup-epochs", type=float, default=2.0)
    ap.add_argument("--dpo-epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "align_recipe.json"))
    ap.add_argument("--config", help="an AlignConfig YAML (e.g. recipes/align-cada.yaml); --limit and the "
                    "--*-per-label flags override its sizes")
    ap.add_argument("--judgement-per-label", type=int)
    ap.add_argument("--warmup-per-label", type=int)
    ap.add_argument("--calibration-per-label", type=int)
    args = ap.parse_args()

    from cada.config import AlignConfig, GenConfig, PoolConfig, StageTraining
    from cada.pipeline.align import align
    from cada.pipeline.pools import prepare_pools
    from cada.spec import load_spec

    if args.config:  # the same overrides as `cada align --config ... --limit ...`, so its run folder resumes
        cfg = AlignConfig.from_yaml(args.config)
        sizes = {k: getattr(args, k) for k in ("judgement_per_label", "warmup_per_label", "calibration_per_label")
                 if getattr(args, k) is not None}
        if args.limit is not None:
            cfg = cfg.model_copy(update={"pool": cfg.pool.model_copy(update={"limit_per_label": args.limit})})
        cfg = cfg.model_copy(update=sizes)
    else:
        # the early recipe as results/align_recipe.json recorded it: no judgement stage (a default since), LoRA
        cfg = AlignConfig(arm="cada", judgement=False, pool=PoolConfig(limit_per_label=args.limit or 120,
                                                                       heldout_per_label=50),
                          generation=GenConfig(n=args.n, k=args.k, max_new_tokens=args.max_new_tokens),
                          train=StageTraining(epochs=args.dpo_epochs, learning_rate=args.lr, max_length=640),
                          warmup_train=StageTraining(epochs=args.warmup_epochs, learning_rate=args.lr, max_length=640))
    run = Path(args.run)
    _, heldout, _ = prepare_pools(cfg, run, load_spec())
    result: dict = {"config": cfg.model_dump(mode="json")}
    result["base"] = refusal_rates("smollm2-135m", heldout, run / "eval-base", args.eval_max_new_tokens)
    print("base", result["base"], flush=True)
    t0 = time.perf_counter()
    summary = align(cfg, run)
    result["align_seconds"] = round(time.perf_counter() - t0, 1)
    result["summary"] = summary
    stages = [("warmup_only", run / "round-1" / "warmup" / "model", "eval-warmup")]
    if summary.get("calibration"):  # the DPO model before the calibration pass
        stages.append(("dpo", run / "round-1" / "train" / "model", "eval-dpo"))
    for name, model, folder in stages:
        if model.exists():
            result[name] = refusal_rates(str(model), heldout, run / folder, args.eval_max_new_tokens)
            print(name, result[name], flush=True)
    result["cada"] = refusal_rates(summary["model"], heldout, run / "eval-cada", args.eval_max_new_tokens)
    print("cada", result["cada"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
