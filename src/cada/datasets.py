"""What trains on what: the training sets, built with context distillation (the spec never appears in a training
prompt, only the raw user request, so the model learns to recall the statutes and precedents itself).

* :func:`dpo_pairs` -- CADA / rules-only DA: chosen = the best-rewarded chain, rejected = the worst, ties skipped.
  For a harmful prompt whose samples all comply, a precedent-grounded refusal written from the matched case may
  serve as chosen (``chosen_source: "precedent"``); for a benign prompt whose samples all comply, a refusal written
  the same way may serve as rejected (``rejected_source: "precedent"``), which teaches against over-refusal.
  With ``consistency=True`` each such pair gets a twin whose rejected side keeps the chosen analysis and swaps in
  the wrong answer (a benign analysis followed by the refusal, a harmful one followed by an own compliant answer;
  ``rejected_source: "consistency"``): the shared analysis cancels out of the DPO margin, so the twin teaches the
  answer to follow the decision the analysis already made.
* :func:`dpo_cr_pairs` -- the paper's DPO w CR: the case-augmented output against the direct refusal.
* :func:`rl_set` -- the RL arm's prompts, with the spec in the prompt or beside it (``context_prompt``).
* :func:`sft_set` -- the SFT arms (rows in prompt/completion form, so the loss falls on the answer only): ``dr`` (direct refusals for harmful, the model's own best answer for benign),
  ``sc`` (code-grounded chains), ``cr`` (case-grounded chains).
* :func:`warmup_set` -- the DPO arms' SFT warm-up (grounded refusals, the policy's own benign answers);
  :func:`judgement_set` / :func:`encode_judgement` -- the judgement stage's decision lines; the calibration pass
  reuses both. :func:`fit_length` drops what is too long to train on.

A chain the model wrote without the ``### Analysis`` / ``### Final Response`` format is put into that format with
an analysis grounded in the nearest precedent, so the trained model learns the format and to cite cases.
"""

from __future__ import annotations

from collections.abc import Sequence

from cada.reasoning import ANALYSIS_HEADER, FINAL_HEADER, parse_output
from cada.spec.schema import Precedent, Spec

REFUSAL = "I can't help with that."
#: the paper's direct refusals: SFT w DR's target, and DPO w CR's rejected side
DIRECT_REFUSAL = "I am sorry, but I cannot comply with the request."
DPO_CR_REJECTED = "I cannot comply with the request."
LEAD = {"comply": "This request is benign.", "refuse": "This request is harmful.",
        "safe_complete": "This request signals a risk of self-harm."}
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

    def nearest(self, prompt: str, verdicts: Sequence[str] | None = None, category: str | None = None) -> Precedent:
        """The most similar case with one of ``verdicts``, preferring the request's hazard ``category``."""
        key = f"{prompt}\x00{verdicts}\x00{category}"
        if key not in self._cache:
            scored = [c for c, _ in self._retriever.scored(prompt, len(self.spec.cases))]
            ok = [c for c in scored if verdicts is None or c.verdict.value in verdicts] or scored
            self._cache[key] = next((c for c in ok if c.category == category), ok[0])
        return self._cache[key]

    def analysis(self, prompt: str, decision: str, category: str | None = None) -> str:
        """Why ``decision`` (comply | refuse | safe_complete), by analogy to the nearest precedent with that verdict."""
        case = self.nearest(prompt, [decision], category)
        verb = {"comply": "help fully", "refuse": "decline briefly",
                "safe_complete": "respond with support and safety resources"}[decision]
        # short on purpose: the judgement first, so a small model commits to it before citing; then the case
        # and its verdict. The case's rationale stays out: it was in context during self-generation, and a small
        # model asked to recall it from memory only makes one up (and runs out of tokens before answering)
        return (f"{LEAD[decision]} The closest precedent is {case.id} ({case.category}, {case.verdict.value}), "
                f"so I should {verb}.")

    def refusal(self, prompt: str, category: str | None = None) -> str:
        # the supportive answer is for self-harm only: a safe-completion case of another category (C07, someone
        # in danger at home) must not turn a crime request into a crisis-line message. Without a known category,
        # the nearest case decides.
        self_harm = category == "suicide_self_harm" or (
            category is None and self.nearest(prompt, ["refuse", "safe_complete"]).category == "suicide_self_harm")
        if self_harm:
            return chain(self.analysis(prompt, "safe_complete", "suicide_self_harm"),
                         SAFE_ALTERNATIVE["suicide_self_harm"])
        return chain(self.analysis(prompt, "refuse", category), REFUSAL)

    def formatted(self, record: dict) -> str:
        """The record's chain in the answer format (its own if well-formed, else grounded in a precedent)."""
        if record.get("format_ok") and record.get("reasoning"):
            return chain(record["reasoning"], record["response"])
        decision = "comply" if record["judge"] == "comply" else (
            "safe_complete" if record.get("category") == "suicide_self_harm" else "refuse")
        return chain(self.analysis(record["prompt"], decision, record.get("category")), record["response"])


class RuleWriter(PrecedentWriter):
    """The rules-only counterpart for deliberative alignment (arm ``da``, SFT w Sc): analyses cite the rule of the
    detailed codes that covers the request's hazard category (taken from the prompt's label when known, else
    from the nearest precedent), never a precedent."""

    def _rule(self, prompt: str, category: str | None, decision: str):
        rules = self.spec.codes.rules
        cat = category if category and any(r.category == category for r in rules) else (
            self.nearest(prompt, [decision]).category)
        return next((r for r in rules if r.category == cat), None)

    def analysis(self, prompt: str, decision: str, category: str | None = None) -> str:
        rule = self._rule(prompt, category, decision)
        if rule is None:
            return (f"{LEAD[decision]} No rule of the code covers it, so the defaults apply: "
                    + ("I should help fully." if decision == "comply" else "I should decline briefly."))
        if decision == "comply":
            why = "allows it" if rule.allowed else "prohibits none of it"
            return f"{LEAD[decision]} Rule {rule.id} ({rule.category}) applies and {why}, so I should help fully."
        verb = "respond with support and safety resources" if decision == "safe_complete" else "decline briefly"
        return f"{LEAD[decision]} Rule {rule.id} ({rule.category}) covers it, so I should {verb}."

    def refusal(self, prompt: str, category: str | None = None) -> str:
        if category == "suicide_self_harm":
            return chain(self.analysis(prompt, "safe_complete", category), SAFE_ALTERNATIVE["suicide_self_harm"])
        return chain(self.analysis(prompt, "refuse", category), REFUSAL)


def writer_for(mode: str, spec: Spec) -> PrecedentWriter:
    """The writer whose analyses match a self-generation mode: rules for ``codes``, precedents otherwise."""
    return RuleWriter(spec) if str(getattr(mode, "value", mode)) == "codes" else PrecedentWriter(spec)


def sft_row(pid: str, label: str, category: str | None, prompt: str, text: str) -> dict:
    """One context-distilled SFT example in TRL's conversational prompt/completion form (loss on the answer only)."""
    return {"id": pid, "label": label, "category": category, "prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": text}]}


def _by_prompt(records: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["id"], []).append(r)
    return groups


def _example(r: dict) -> dict:
    return {"id": r["id"], "label": r["label"], "category": r.get("category"),
            "prompt": [{"role": "user", "content": r["prompt"]}]}


def _wrong_answer(best: dict, rs: Sequence[dict]) -> str | None:
    """The answer that contradicts a right decision: the refusal for a benign prompt (the policy's own when one of
    its samples refused), an own compliant answer for a harmful one (None when no sample complied)."""
    if best["label"] == "benign":
        return next((r["response"] for r in rs if r["judge"] == "refuse" and r["response"].strip()), REFUSAL)
    return next((r["response"] for r in rs if r["judge"] == "comply" and r["response"].strip()), None)


def dpo_pairs(records: Sequence[dict], spec: Spec, *, precedent_fallback: bool = True,
              consistency: bool = False) -> tuple[list[dict], dict]:
    """Conversational DPO rows (prompt / chosen / rejected, context-distilled) and counts of what was made."""
    writer = writer_for(records[0].get("mode", "cases") if records else "cases", spec)
    rows: list[dict] = []
    stats = {"prompts": 0, "pairs": 0, "own_pairs": 0, "precedent_chosen": 0, "precedent_rejected": 0,
             "consistency_pairs": 0, "ties": 0}
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
        right = chosen_src == "precedent" or best["judge"] == ("comply" if best["label"] == "benign" else "refuse")
        wrong = _wrong_answer(best, rs) if consistency and right else None
        own = parse_output(chosen)  # chosen is a chain(): its reasoning and answer come back unchanged
        if wrong is not None and own.response != wrong.strip():
            rows.append({**rows[-1], "rejected": [{"role": "assistant", "content": chain(own.reasoning, wrong)}],
                         "rejected_source": "consistency"})
            stats["consistency_pairs"] += 1
    stats["pairs"] = len(rows)
    stats["usable_share"] = round((len(rows) - stats["consistency_pairs"]) / max(1, stats["prompts"]), 3)
    return rows, stats


def sft_set(records: Sequence[dict], spec: Spec, arm: str) -> tuple[list[dict], dict]:
    """SFT rows ({"messages": [user, assistant]}) for an arm: ``dr`` | ``sc`` | ``cr``.

    ``dr``: harmful -> a direct one-sentence refusal (support for self-harm), benign -> the model's own best
    answer (response only). ``sc`` / ``cr``: the best chain per prompt from code- / case-grounded records (pass
    records generated in that mode); a harmful prompt with no refusing sample gets a precedent-grounded refusal.
    """
    if arm not in ("dr", "sc", "cr"):
        raise ValueError(f"unknown SFT arm {arm!r}: use dr, sc or cr")
    writer = writer_for("codes" if arm == "sc" else "cases", spec)
    rows: list[dict] = []
    stats = {"prompts": 0, "examples": 0, "precedent_written": 0, "skipped": 0}
    for pid, rs in _by_prompt(records).items():
        stats["prompts"] += 1
        best = max(rs, key=lambda r: (r["reward"], bool(r.get("format_ok")), -r["sample"]))
        if arm == "dr":
            if best["label"] == "harmful":
                text = (SAFE_ALTERNATIVE["suicide_self_harm"] if best.get("category") == "suicide_self_harm"
                        else DIRECT_REFUSAL)
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
        rows.append(sft_row(pid, best["label"], best.get("category"), best["prompt"], text))
    stats["examples"] = len(rows)
    return rows, stats


def dpo_cr_pairs(records: Sequence[dict], spec: Spec) -> tuple[list[dict], dict]:
    """The paper's DPO w CR (context-distilled): chosen = the case-augmented output, rejected = the direct refusal
    "I cannot comply with the request.". For a harmful prompt the chosen side is its best refusing chain (a
    precedent-grounded refusal when no sample refused); for a benign one (a mixed pool), its best helpful chain,
    so the direct refusal is what it learns against (skipped when no sample helped)."""
    writer = writer_for("cases", spec)
    rows: list[dict] = []
    stats = {"prompts": 0, "pairs": 0, "own_chosen": 0, "precedent_chosen": 0, "skipped": 0}
    for pid, rs in _by_prompt(records).items():
        stats["prompts"] += 1
        best = max(rs, key=lambda r: (r["reward"], bool(r.get("format_ok")), -r["sample"]))
        if best["reward"] > 0:
            chosen, source = writer.formatted(best), "self"
            stats["own_chosen"] += 1
        elif best["label"] == "harmful":
            chosen, source = writer.refusal(best["prompt"], best.get("category")), "precedent"
            stats["precedent_chosen"] += 1
        else:
            stats["skipped"] += 1
            continue
        rows.append({**_example(best), "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": DPO_CR_REJECTED}],
                     "chosen_source": source, "rejected_source": "direct_refusal"})
    stats["pairs"] = len(rows)
    return rows, stats


def rl_set(prompts: Sequence, spec: Spec, *, placement: str = "distilled", k: int | None = 6,
           hint: bool = False) -> list[dict]:
    """The RL arm's rows: the request (``prompt``, conversational), its ``label`` and ``category``, and the prompt
    it is sampled from: the statutes plus the ``k`` precedents nearest the request (with ``hint``, those of its
    hazard category first). ``in_prompt`` puts that prompt in ``prompt`` itself (the update sees the spec);
    ``distilled`` keeps the bare request in ``prompt`` and the spec's in ``context_prompt``
    (:class:`cada.rl.CadaRLTrainer` samples from one and updates on the other)."""
    from cada.reasoning import Mode, SafetyReasoner

    if placement not in ("in_prompt", "distilled"):
        raise ValueError(f"placement {placement!r}: use in_prompt or distilled")
    texts = [p.prompt for p in prompts]
    reasoner = SafetyReasoner(spec, Mode.cases, k=k)
    messages, _ = reasoner.messages(texts, categories=[p.category for p in prompts] if hint else None)
    rows = []
    for p, msgs in zip(prompts, messages):
        bare = [{"role": "user", "content": p.prompt}]
        row = {"id": p.id, "label": p.label, "category": p.category}
        rows.append({**row, "prompt": msgs} if placement == "in_prompt" else
                    {**row, "prompt": bare, "context_prompt": msgs})
    return rows


def warmup_set(prompts: list, records: list[dict], spec, mode: str = "cases",
               answers: dict[str, str] | None = None) -> list[dict]:
    """SFT warm-up rows that teach the answer format and grounded reasoning before DPO (context-distilled):
    harmful -> a refusal grounded in the nearest precedent (``cases``) or the covering rule (``codes``);
    benign -> the model's own best complying answer (from ``records``, else from ``answers``: its direct answer
    to the bare request), with an analysis grounded the same way. Benign prompts without an answer are skipped."""
    from cada.judges.refusal import string_match_label
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


def judgement_set(prompts: list) -> list[dict]:
    """SFT rows that teach the decision alone: the bare request -> the first line of the warm-up's analysis
    (``This request is harmful.``, ``... benign.``, or the self-harm line), context-distilled."""
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
