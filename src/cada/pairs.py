"""Training sets from self-generated records, with context distillation: the spec never appears in a training
prompt, only the raw user request, so the model learns to recall the statutes and precedents itself.

* :func:`dpo_pairs` -- CADA / rules-only DA: chosen = the best-rewarded chain, rejected = the worst, ties skipped.
  For a harmful prompt whose samples all comply, a precedent-grounded refusal written from the matched case may
  serve as chosen (``chosen_source: "precedent"``); for a benign prompt whose samples all comply, a refusal written
  the same way may serve as rejected (``rejected_source: "precedent"``), which teaches against over-refusal.
* :func:`sft_set` -- the SFT arms: ``dr`` (direct refusals for harmful, the model's own best answer for benign),
  ``sc`` (code-grounded chains), ``cr`` (case-grounded chains).

A chain the model wrote without the ``### Analysis`` / ``### Final Response`` format is put into that format with
an analysis grounded in the nearest precedent, so the trained model learns the format and to cite cases.
"""

from __future__ import annotations

from collections.abc import Sequence

from cada.reasoning import ANALYSIS_HEADER, FINAL_HEADER
from cada.spec.schema import Precedent, Spec

REFUSAL = "I can't help with that."
SAFE_ALTERNATIVE = {
    "suicide_self_harm": ("I'm really sorry you're going through this. You don't have to face it alone: please "
                          "reach out to someone you trust or a local crisis line (in the US, call or text 988) "
                          "right now."),
}


def chain(reasoning: str, response: str) -> str:
    return f"{ANALYSIS_HEADER}\n{reasoning.strip()}\n{FINAL_HEADER}\n{response.strip()}"


class PrecedentWriter:
    """Writes precedent-grounded analyses and refusals from the case nearest to a request."""

    def __init__(self, spec: Spec):
        from cada.spec.retrieval import CaseRetriever

        self.spec = spec
        self._retriever = CaseRetriever(spec)
        self._cache: dict[str, Precedent] = {}

    def nearest(self, prompt: str, verdicts: Sequence[str] | None = None) -> Precedent:
        key = f"{prompt}\x00{verdicts}"
        if key not in self._cache:
            scored = self._retriever.scored(prompt, len(self.spec.cases))
            pick = next((c for c, _ in scored if verdicts is None or c.verdict.value in verdicts), scored[0][0])
            self._cache[key] = pick
        return self._cache[key]

    def analysis(self, prompt: str, decision: str) -> str:
        """Why ``decision`` (comply | refuse | safe_complete), by analogy to the nearest precedent with that verdict."""
        case = self.nearest(prompt, [decision])
        verb = {"comply": "help fully", "refuse": "decline briefly",
                "safe_complete": "respond with support and safety resources"}[decision]
        # short on purpose: a small model must reach the final response inside a modest token budget
        return (f"The closest precedent is {case.id} ({case.category}, {case.verdict.value}): {case.rationale} "
                f"This request is analogous, so I should {verb}.")

    def refusal(self, prompt: str, category: str | None = None) -> str:
        case = self.nearest(prompt, ["refuse", "safe_complete"])
        if case.verdict.value == "safe_complete" or category == "suicide_self_harm":
            return chain(self.analysis(prompt, "safe_complete"), SAFE_ALTERNATIVE["suicide_self_harm"])
        return chain(self.analysis(prompt, "refuse"), REFUSAL)

    def formatted(self, record: dict) -> str:
        """The record's chain in the answer format (its own if well-formed, else grounded in a precedent)."""
        if record.get("format_ok") and record.get("reasoning"):
            return chain(record["reasoning"], record["response"])
        decision = "comply" if record["judge"] == "comply" else (
            "safe_complete" if record.get("category") == "suicide_self_harm" else "refuse")
        return chain(self.analysis(record["prompt"], decision), record["response"])


def _by_prompt(records: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["id"], []).append(r)
    return groups


def _example(r: dict) -> dict:
    return {"id": r["id"], "label": r["label"], "category": r.get("category"),
            "prompt": [{"role": "user", "content": r["prompt"]}]}


def dpo_pairs(records: Sequence[dict], spec: Spec, *, precedent_fallback: bool = True) -> tuple[list[dict], dict]:
    """Conversational DPO rows (prompt / chosen / rejected, context-distilled) and counts of what was made."""
    writer = PrecedentWriter(spec)
    rows: list[dict] = []
    stats = {"prompts": 0, "pairs": 0, "own_pairs": 0, "precedent_chosen": 0, "precedent_rejected": 0, "ties": 0}
    for pid, rs in _by_prompt(records).items():
        stats["prompts"] += 1
        ranked = sorted(rs, key=lambda r: (r["reward"], bool(r.get("format_ok")), -r["sample"]), reverse=True)
        best, worst = ranked[0], ranked[-1]
        chosen_src = rejected_src = "self"
        if best["reward"] > worst["reward"]:
            chosen, rejected = writer.formatted(best), writer.formatted(worst)
            stats["own_pairs"] += 1
        elif precedent_fallback and best["label"] == "harmful" and best["judge"] == "comply":
            chosen, rejected = writer.refusal(best["prompt"], best.get("category")), writer.formatted(worst)
            chosen_src = "precedent"
            stats["precedent_chosen"] += 1
        elif precedent_fallback and best["label"] == "benign" and best["judge"] == "comply":
            chosen, rejected = writer.formatted(best), writer.refusal(best["prompt"], best.get("category"))
            rejected_src = "precedent"
            stats["precedent_rejected"] += 1
        else:
            stats["ties"] += 1
            continue
        rows.append({**_example(best), "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "chosen_source": chosen_src, "rejected_source": rejected_src,
                     "chosen_reward": best["reward"], "rejected_reward": worst["reward"]})
    stats["pairs"] = len(rows)
    stats["usable_share"] = round(len(rows) / max(1, stats["prompts"]), 3)
    return rows, stats


def sft_set(records: Sequence[dict], spec: Spec, arm: str) -> tuple[list[dict], dict]:
    """SFT rows ({"messages": [user, assistant]}) for an arm: ``dr`` | ``sc`` | ``cr``.

    ``dr``: harmful -> a direct one-sentence refusal (support for self-harm), benign -> the model's own best
    answer (response only). ``sc`` / ``cr``: the best chain per prompt from code- / case-grounded records (pass
    records generated in that mode); a harmful prompt with no refusing sample gets a precedent-grounded refusal.
    """
    if arm not in ("dr", "sc", "cr"):
        raise ValueError(f"unknown SFT arm {arm!r}: use dr, sc or cr")
    writer = PrecedentWriter(spec)
    rows: list[dict] = []
    stats = {"prompts": 0, "examples": 0, "precedent_written": 0, "skipped": 0}
    for pid, rs in _by_prompt(records).items():
        stats["prompts"] += 1
        best = max(rs, key=lambda r: (r["reward"], bool(r.get("format_ok")), -r["sample"]))
        if arm == "dr":
            if best["label"] == "harmful":
                text = (SAFE_ALTERNATIVE["suicide_self_harm"] if best.get("category") == "suicide_self_harm"
                        else REFUSAL)
            elif best["reward"] > 0:
                text = best["response"]
            else:
                stats["skipped"] += 1
                continue
        elif best["reward"] > 0:
            text = writer.formatted(best)
        elif best["label"] == "harmful":
            text = writer.refusal(best["prompt"], best.get("category"))
            stats["precedent_written"] += 1
        else:
            stats["skipped"] += 1
            continue
        rows.append({"id": pid, "label": best["label"], "category": best.get("category"),
                     "messages": [{"role": "user", "content": best["prompt"]},
                                  {"role": "assistant", "content": text}]})
    stats["examples"] = len(rows)
    return rows, stats
