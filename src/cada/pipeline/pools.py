"""The pool stage: the training and held-back prompts a run draws once (``pool/``) and every stage reuses, each
stage's own prompts set aside there (warm-up, judgement, calibration), the look-alike validation prompts no stage
trains on (``pool.validation_per_label``), and a study's second overlap check against its own evaluation sets.
Every draw itself lives in :mod:`cada.data.pools`, every overlap test in :mod:`cada.data.decontam`."""

from __future__ import annotations

from pathlib import Path

from cada.config import AlignConfig, EvalSet
from cada.data import decontam as D
from cada.data import pools as P
from cada.data import sources as S
from cada.data.benchmarks import eval_items
from cada.errors import CadaError
from cada.records import read_json, write_json


def prepare_pools(cfg: AlignConfig, run: Path, spec) -> tuple[list, list, dict]:
    """Train and held-back prompts (written once to ``run/pool``, reused on resume).

    With ``pool.validation_per_label``, the look-alike validation prompts (:func:`cada.data.pools.validation_pool`)
    are set aside first, in ``pool/validation.jsonl``: no pool prompt with their id or near-duplicating one
    (:func:`cada.data.decontam.drop_near_heldout`) is held back or reaches any stage. ``pool/report.json`` lists the
    data license of every shipped source the run read (``licenses``)."""
    pool_dir = run / "pool"
    train_path, held_path, report_path = pool_dir / "train.jsonl", pool_dir / "heldout.jsonl", pool_dir / "report.json"
    if train_path.exists() and held_path.exists() and report_path.exists():
        return P.read_pool(train_path), P.read_pool(held_path), read_json(report_path)
    if cfg.pool.user_pool:
        # a user's pool gets the shipped pools' check: no evaluation prompt (or a reworded one) trains
        prompts, removed = D.drop_eval_overlap(P.load_user_pool(cfg.pool.user_pool, spec=spec))
        report: dict = {"source": cfg.pool.user_pool}
        licenses: dict = {}
    else:
        pools = P.build_pools(jailbreak_share=cfg.pool.jailbreak_share, seed=cfg.seed, spec=spec,
                              sources=cfg.pool.sources)
        prompts, removed = pools.prompts, pools.removed
        report = {"counts": pools.counts}
        licenses = dict(pools.licenses)
    report.update(removed_for_eval_overlap=len(removed),
                  removed=[{**r, "matched": D.fingerprint(r["matched"])} for r in removed[:50]])
    validation = []
    if cfg.pool.validation_per_label:
        # set aside before anything is drawn: no stage trains on them or a near duplicate, nor holds them back
        val = P.validation_pool(cfg.pool.validation_per_label, seed=cfg.seed, spec=spec)
        validation, taken = val.prompts, {p.id for p in val.prompts}
        rest, near = D.drop_near_heldout([p for p in prompts if p.id not in taken], validation)
        report["validation"] = {"total": len(validation), "counts": val.counts,
                                "pool_prompts_dropped": len(prompts) - len(rest), "near_validation_dropped": near}
        licenses.update(val.licenses)
        for label in ("harmful", "benign"):
            if any(p.label == label for p in prompts) and not any(p.label == label for p in rest):
                raise CadaError(f"pool.validation_per_label {cfg.pool.validation_per_label}: the validation "
                                f"prompts (or their near duplicates) take every {label} prompt of the pool; lower "
                                "it or add sources")
        prompts = rest
    report["licenses"] = S.licenses(licenses)  # every shipped source read, in the table's order
    train, held = P.split_heldout(prompts, n_heldout_per_label=cfg.pool.heldout_per_label, seed=cfg.seed)
    # a training prompt that near-duplicates a held-back one would leak it (the pools have reworded repeats)
    train, near = D.drop_near_heldout(train, held)
    report["train_near_heldout_dropped"] = near
    for label in ("harmful", "benign"):
        n_all = sum(p.label == label for p in prompts)
        if n_all and not any(p.label == label for p in train):
            raise CadaError(f"pool.heldout_per_label {cfg.pool.heldout_per_label}: it holds back all {n_all} "
                            f"{label} prompts of the pool (or their near duplicates), so none is left to train on; "
                            "lower it or add prompts")
    calibration = []
    if cfg.calibration_per_label:  # set aside first, so that no other stage trains on them or on a near duplicate
        calibration = P.calibration_draw(train, cfg.calibration_per_label, cfg.seed + 3)
        reserved = {p.id for p in calibration}
        train, report["train_near_calibration_dropped"] = D.drop_near_heldout(
            [p for p in train if p.id not in reserved], calibration)
        for label in ("benign", "harmful"):
            if not any(p.label == label for p in calibration) or not any(p.label == label for p in train):
                raise CadaError(f"calibration_per_label {cfg.calibration_per_label}: the pool has too few {label} "
                                "prompts to set some aside for the calibration pass and train on the rest; lower it")
    everything = train
    if cfg.pool.limit_per_label:
        train = P.balanced(train, cfg.pool.limit_per_label, cfg.seed)
    pool_dir.mkdir(parents=True, exist_ok=True)
    warm = train
    if cfg.warmup_per_label:
        # the self-generation prompts first (their own answers are reused), then more of the same pool
        warm = P.extend(train, everything, cfg.warmup_per_label, cfg.seed + 1)
        P.write_pool(pool_dir / "warmup.jsonl", warm)
    if cfg.judgement_per_label:
        P.write_pool(pool_dir / "judgement.jsonl", P.extend(warm, everything, cfg.judgement_per_label, cfg.seed + 2))
    if cfg.calibration_per_label:
        P.write_pool(pool_dir / "calibration.jsonl", calibration)
    if validation:
        P.write_pool(pool_dir / "validation.jsonl", validation)
    P.write_pool(train_path, train)
    P.write_pool(held_path, held)
    report.update(train=len(train), heldout=len(held))
    write_json(report_path, report)
    return train, held, report


def judgement_prompts(cfg: AlignConfig, run: Path) -> list:
    """The judgement stage's prompts: ``pool/judgement.jsonl`` with ``judgement_per_label``, else the warm-up's."""
    name = "judgement" if cfg.judgement_per_label else "warmup" if cfg.warmup_per_label else "train"
    return P.read_pool(run / "pool" / f"{name}.jsonl")


def study_pools(cfg: AlignConfig, out: Path, spec, sets: list[tuple[EvalSet, list]]) -> tuple[list, list, dict]:
    """The shared training / held-back pools, with every prompt that overlaps (exactly or nearly) any of this
    study's evaluation prompts removed from training -- a second guard after the pools' own check against the
    shipped benchmarks, and the only one for user pools and user eval files."""
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
        return D.drop_eval_overlap(prompts, sets=texts, paraphrase_refs=requests)

    train_before = len(train)
    kept, removed = check(train)
    if removed:
        train = kept
        P.write_pool(out / "pool" / "train.jsonl", train)
    # the warm-up, judgement and calibration prompts reach beyond the self-generation pool: the same check for them
    for extra in ("warmup", "judgement", "calibration"):
        path = out / "pool" / f"{extra}.jsonl"
        if path.exists():
            prompts = P.read_pool(path)
            rest, hit = check(prompts)
            if hit:
                P.write_pool(path, rest)
            report.setdefault("study_overlap_extra", {})[extra] = len(hit)
    report["study_overlap"] = {"eval_prompts_checked": len({t for ts in texts.values() for t in ts}),
                               "train_removed": train_before - len(train),
                               "examples": [{"train": r["prompt"][:120], "eval": D.fingerprint(r["matched"]),
                                             "eval_set": r["eval_set"], "kind": r["kind"],
                                             "similarity": r["similarity"]} for r in removed[:10]]}
    report["train"] = len(train)
    write_json(out / "pool" / "report.json", report)
    return train, held, report


def heldout_sets(pool_dir: Path) -> list[tuple[EvalSet, list]]:
    """The training pools' held-back prompts as two evaluation sets (``heldout-harmful``, ``heldout-benign``), and
    the look-alike validation prompts as two more (``validation-harmful``, ``validation-benign``) when the pools
    have them (``pool/validation.jsonl``): the sets to choose settings on."""
    out = []
    for split in ("heldout", "validation"):
        if split == "validation" and not (pool_dir / "validation.jsonl").exists():
            continue
        prompts = P.read_pool(pool_dir / f"{split}.jsonl")
        for label in ("harmful", "benign"):
            path = pool_dir / f"{split}-{label}.jsonl"
            if not path.exists():
                P.write_pool(path, [p for p in prompts if p.label == label])
            s = EvalSet(name=f"{split}-{label}", file=str(path), kind=label)
            items = eval_items(s)
            if items:
                out.append((s, items))
    return out


def generation_prompts(pool: Path | None, limit: int | None, seed: int) -> tuple[list, int]:
    """The prompts ``cada generate`` samples for: a user's pool (CSV/JSON/JSONL; a pool ``cada align`` wrote is
    read as it is) with the shipped pools' overlap check on its user prompts, or the shipped pools; at most
    ``limit`` per label. Returns the prompts and how many were left out for overlapping an evaluation prompt."""
    if pool is None:
        prompts, removed = P.build_pools(seed=seed).prompts, 0
    else:
        prompts = P.load_user_pool(pool) if pool.suffix in (".csv", ".json") else P.read_pool(pool)
        # a pool `cada align` wrote was checked when it was built
        user = [p for p in prompts if p.source == "user"]
        gone = {r["id"] for r in (D.drop_eval_overlap(user)[1] if user else [])}
        prompts, removed = [p for p in prompts if p.id not in gone], len(gone)
    return (P.balanced(prompts, limit, seed) if limit else prompts), removed
