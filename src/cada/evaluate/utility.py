"""Utility measures (does alignment cost the model its ability to answer benign questions?): GSM8K and BBH exact
match on the final answer of a generated response, MMLU 5-shot by the log-likelihood of the answer letters, and the
mean log-likelihood of reference answers.

BBH and MMLU are measured as in Jin et al. 2026: BBH 0-shot, the final answer after ``Answer:`` matched exactly
(:func:`bbh_correct`); MMLU as lm-evaluation-harness does it (:func:`mmlu_prompt`, :func:`mmlu_letter_logprobs`):
the first five dev-split questions of the same subject as shots, the prompt ending ``Answer:``, the answer the
letter among `` A``/`` B``/`` C``/`` D`` the model gives the highest log-probability as the next token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from cada.errors import CadaError

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_number(text: str) -> str | None:
    """The answer number of a response: after '####' if present, else the last number.

    >>> extract_number("So she makes 9 * 2 = $18.\\n#### 18")
    '18'
    >>> extract_number("The answer is 1,234.50 dollars.")
    '1234.5'
    >>> extract_number("no idea") is None
    True
    """
    tail = text.split("####")[-1] if "####" in text else text
    nums = _NUM.findall(tail)
    if not nums:
        return None
    value = nums[-1].replace(",", "")
    try:
        f = float(value)
    except ValueError:
        return None
    return str(int(f)) if f == int(f) else str(f)


def gsm8k_correct(response: str, reference: str) -> bool:
    """Exact match of the final numbers (the reference's comes after '####')."""
    got, want = extract_number(response or ""), extract_number(reference)
    return got is not None and got == want


# --- BBH: 0-shot, exact match on the final answer ---------------------------------------------------------

BBH_INSTRUCTION = "Give the final answer after 'Answer:'."
BBH_CHOICE_INSTRUCTION = ("Give the final answer after 'Answer:', as the option's letter in parentheses, e.g. "
                          "'Answer: (A)'.")
# the last answer marker of a response: "Answer: x", "**Answer:** x", "Final answer: x", "the answer is x"
_ANSWER_MARK = re.compile(r"(?i)\banswer\b(?:\s+is)?[*_\s]*[:\uff1a]|\bthe\s+answer\s+is\b")
_CHOICE = re.compile(r"\(([A-Z])\)")
_LEADING_CHOICE = re.compile(r"^(?:[Oo]ption\s*)?\(([A-Za-z])\)|^(?:[Oo]ption\s*)?([A-Z])(?:[.:)]|$)")
# the closed answers of the yes/no, true/false and valid/invalid tasks: "Yes, because ..." answers "yes"
_BINARY = {"yes", "no", "true", "false", "valid", "invalid"}
_BRACKETS = re.compile(r"[\[\](){}<>\s]+")  # dyck_languages: the closing sequence, spacing aside


def bbh_prompt(question: str) -> str:
    """A BBH example's input as a 0-shot prompt: the question and how to give the answer (a multiple-choice
    question, one with an option ``(A)``, is answered by the option's letter, as its target is).

    >>> bbh_prompt("not ( True ) and ( True ) is")
    "not ( True ) and ( True ) is\\n\\nGive the final answer after 'Answer:'."
    """
    choice = re.search(r"^\(A\)", question, re.M) is not None
    return f"{question}\n\n{BBH_CHOICE_INSTRUCTION if choice else BBH_INSTRUCTION}"


def bbh_answer(response: str) -> str | None:
    """The final answer of a response: the first line after its last answer marker ("Answer:", "the answer
    is"), else its last non-empty line.

    >>> bbh_answer("Let me think. not True is False.\\nAnswer: False.")
    'False.'
    >>> bbh_answer("The answer is (B) because...")
    '(B) because...'
    >>> bbh_answer("**Answer:**\\n(C)")
    '(C)'
    >>> bbh_answer("red\\nblue\\n") , bbh_answer("  ")
    ('blue', None)
    """
    marks = list(_ANSWER_MARK.finditer(response or ""))
    tail = response[marks[-1].end():] if marks else (response or "")
    lines = [line.strip() for line in tail.splitlines() if line.strip(" *_`")]
    if not lines:
        return None
    return (lines[0] if marks else lines[-1]).strip()


def _strip_enclosing_parens(text: str) -> str:
    """``(x)`` -> ``x`` when one pair of parentheses encloses the whole text (not ``(a) or (b)``)."""
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0 and i < len(text) - 1:
                return text
        text = text[1:-1].strip()
    return text


def bbh_normalize(text: str) -> str:
    """An answer for comparison: case and whitespace folded, markdown emphasis, quotes, a trailing period and
    enclosing parentheses removed.

    >>> bbh_normalize("  **True.** "), bbh_normalize("(Monsters,  Inc)"), bbh_normalize("] ) >")
    ('true', 'monsters, inc', '] ) >')
    """
    t = " ".join(text.split()).strip("*_`\"' ")
    t = t.rstrip(".").strip("*_`\"' ")
    return _strip_enclosing_parens(t).lower()


def bbh_choice(text: str) -> str | None:
    """The option letter an answer starts with: ``(B)``, ``(b) blue``, ``B``, ``B.``, ``Option B``; else None
    (a bare lowercase or unpunctuated letter is a word, as in "a blue ball").

    >>> [bbh_choice(x) for x in ("(B) the blue one", "B.", "Option (c)", "A blue ball", "a")]
    ['B', 'B', 'C', None, None]
    """
    m = _LEADING_CHOICE.match(text.strip().strip("*_`\"' "))
    return (m.group(1) or m.group(2)).upper() if m else None


def bbh_correct(response: str, target: str) -> bool:
    """Exact match of a response's final answer (:func:`bbh_answer`) with a BBH target, both normalised
    (:func:`bbh_normalize`). A multiple-choice target ``(X)`` is matched by the option letter the answer starts
    with; a yes/no (true/false, valid/invalid) target by the answer's first word; a bracket sequence
    (dyck_languages) whatever its spacing.

    >>> bbh_correct("Answer: (A)", "(A)"), bbh_correct("Answer: (B) blue", "(A)")
    (True, False)
    >>> bbh_correct("so the answer is Yes, since ...", "Yes"), bbh_correct("Answer: no", "Yes")
    (True, False)
    >>> bbh_correct("Answer: ]])", "] ] )"), bbh_correct("Answer: -38.", "-38"), bbh_correct("", "True")
    (True, True, False)
    """
    got = bbh_answer(response or "")
    if got is None:
        return False
    choice = _CHOICE.fullmatch(target.strip())
    if choice:
        return bbh_choice(got) == choice.group(1)
    have, want = bbh_normalize(got), bbh_normalize(target)
    if have == want:
        return True
    if want in _BINARY:
        return re.split(r"[\s,.;:!]", have, maxsplit=1)[0] == want
    if _BRACKETS.fullmatch(want):
        return "".join(have.split()) == "".join(want.split())
    return False


#: how a reference answer is matched, by the ``scorer`` an item names in its ``meta`` (default: GSM8K's numbers)
SCORERS = {"gsm8k": gsm8k_correct, "bbh": bbh_correct}


def utility_correct(response: str, reference: str, scorer: str | None = None) -> bool:
    """Whether a generated response gives the reference answer, by the set's scorer (``gsm8k`` when unnamed: a
    user file's reference column is matched as GSM8K's final numbers).

    >>> utility_correct("#### 18", "#### 18"), utility_correct("Answer: (B)", "(B)", "bbh")
    (True, True)
    """
    if (scorer or "gsm8k") not in SCORERS:
        raise CadaError(f"unknown utility scorer {scorer!r}: use one of {', '.join(SCORERS)}")
    return SCORERS[scorer or "gsm8k"](response, reference)


# --- MMLU: 5-shot, the log-likelihood of the answer letters -------------------------------------------------

MMLU_LETTERS = ("A", "B", "C", "D")
MMLU_SHOTS = 5


def mmlu_question(row: Mapping) -> str:
    """One MMLU question as lm-evaluation-harness writes it, ending ``Answer:`` (a shot appends `` X``).

    ``row``: ``{"subject", "question", "choices": [four texts], "answer": "A".."D"}``.

    >>> print(mmlu_question({"question": " 2+2? ", "choices": ["3", "4", "5", "6"]}))
    2+2?
    A. 3
    B. 4
    C. 5
    D. 6
    Answer:
    """
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, row["choices"]))
    return f"{row['question'].strip()}{options}\nAnswer:"


def mmlu_prompt(row: Mapping, dev_rows: Sequence[Mapping], shots: int = MMLU_SHOTS) -> str:
    """lm-evaluation-harness's MMLU prompt for ``row``: the subject's description, then the first ``shots`` rows
    of ``dev_rows`` of the same subject with their answers (the dev split is the shots' split; other subjects'
    rows are skipped), then the question.

    >>> dev = [{"subject": "x_y", "question": f"q{i}", "choices": "abcd", "answer": "B"} for i in range(6)]
    >>> p = mmlu_prompt({"subject": "x_y", "question": "Q", "choices": "abcd"}, dev)
    >>> p.startswith("The following are multiple choice questions (with answers) about x y.\\n\\nq0\\nA. a")
    True
    >>> p.count("Answer: B"), p.endswith("\\n\\nQ\\nA. a\\nB. b\\nC. c\\nD. d\\nAnswer:")
    (5, True)
    """
    subject = row["subject"]
    same = [d for d in dev_rows if d["subject"] == subject][:shots]
    if len(same) < shots:
        raise CadaError(f"mmlu: subject {subject!r} has {len(same)} dev rows; {shots}-shot prompts need {shots}")
    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return head + "".join(f"{mmlu_question(d)} {d['answer']}\n\n" for d in same) + mmlu_question(row)


def mmlu_letter_logprobs(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 8,
                         max_length: int | None = None, choices: Sequence[str] = MMLU_LETTERS) -> list[list[float]]:
    """For each prompt, the log-probability of each continuation `` A``, `` B``, `` C``, `` D`` (``choices``,
    each after a space; summed over its tokens where one takes more than one), as lm-evaluation-harness's
    loglikelihood: raw text, no chat template, no special tokens added; a continuation's tokens are those the
    prompt plus the continuation adds to the prompt's. A prompt longer than ``max_length`` (default: the model's
    context) loses its first tokens.
    """
    import inspect

    import torch

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # a row: the tokens fed to the model, and the targets read from it: (prompt, letter, first position, tokens)
    rows: list[tuple[list[int], list[tuple[int, int, int, list[int]]]]] = []
    for i, p in enumerate(prompts):
        ctx = encode(p)
        conts = []
        for letter in choices:
            whole = encode(f"{p} {letter}")
            conts.append(whole[len(ctx):] if whole[:len(ctx)] == ctx else encode(f" {letter}"))
        if all(len(c) == 1 for c in conts):  # the usual case: one pass reads all four next-token log-probs
            rows.append((ctx, [(i, j, len(ctx), c) for j, c in enumerate(conts)]))
        else:
            rows += [((ctx + c)[:-1], [(i, j, len(ctx), c)]) for j, c in enumerate(conts)]
    limit = max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None)
    # only the read positions' logits (a vocabulary-wide row per token of a long prompt is gigabytes); a PEFT
    # wrapper passes the argument on to the model it wraps
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep_arg = "logits_to_keep" in inspect.signature(base.forward).parameters
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out = [[0.0] * len(choices) for _ in prompts]
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))  # similar lengths share a batch
    for b in range(0, len(order), batch_size):
        batch = []
        for r in order[b:b + batch_size]:
            ids, targets = rows[r]
            cut = max(0, len(ids) - limit) if limit else 0
            batch.append((ids[cut:], [(i, j, start - cut, c) for i, j, start, c in targets]))
        width = max(len(ids) for ids, _ in batch)
        ids_t = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=model.device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=model.device)
        # position start - 1 + k predicts the continuation's k-th token; only those positions need logits
        needed = sorted({start - 1 + k for _, ts in batch for _, _, start, c in ts for k in range(len(c))})
        kwargs = {"logits_to_keep": torch.tensor(needed, device=model.device)} if keep_arg else {}
        column = {p: n for n, p in enumerate(needed)} if keep_arg else {p: p for p in needed}
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids_t, attention_mask=mask, **kwargs).logits.float(), -1)
        for row_n, (_, targets) in enumerate(batch):
            for i, j, start, c in targets:
                out[i][j] = float(sum(logp[row_n, column[start - 1 + k], t] for k, t in enumerate(c)))
    return out


def mmlu_predict(model, tokenizer, prompts: Sequence[str], **kwargs) -> list[str]:
    """The letter (of ``choices``, default A-D) with the highest log-probability after each prompt (the first on
    a tie)."""
    choices = kwargs.get("choices", MMLU_LETTERS)
    return [choices[max(range(len(lp)), key=lp.__getitem__)]
            for lp in mmlu_letter_logprobs(model, tokenizer, prompts, **kwargs)]


def mmlu_5shot_accuracy(model, tokenizer, rows: Sequence[Mapping], dev_rows: Sequence[Mapping],
                        **kwargs) -> list[bool]:
    """Whether the model picks each row's answer letter, 5-shot from ``dev_rows`` (:func:`mmlu_prompt`)."""
    picked = mmlu_predict(model, tokenizer, [mmlu_prompt(r, dev_rows) for r in rows], **kwargs)
    return [p == r["answer"] for p, r in zip(picked, rows)]


# --- reference answers ----------------------------------------------------------------------------------

def reference_loglik(model, tokenizer, prompts: Sequence[str], references: Sequence[str],
                     batch_size: int = 8) -> list[float]:
    """Mean per-token log-likelihood of each reference answer given its prompt (chat template, no spec)."""
    import torch

    out: list[float] = []
    device = model.device
    for i in range(0, len(prompts), batch_size):
        ps, rs = prompts[i:i + batch_size], references[i:i + batch_size]
        heads = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in ps]
        head_ids = [tokenizer(h, add_special_tokens=False)["input_ids"] for h in heads]
        full_ids = [h + tokenizer(r, add_special_tokens=False)["input_ids"] for h, r in zip(head_ids, rs)]
        width = max(map(len, full_ids))
        pad = tokenizer.pad_token_id
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in full_ids], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in full_ids], device=device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        for j, (h, f) in enumerate(zip(head_ids, full_ids)):
            span = logp[j, len(h) - 1:len(f) - 1]
            out.append(float(span.mean()) if span.numel() else float("nan"))
    return out
