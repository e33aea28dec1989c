"""Utility measures: GSM8K exact match on the final response, and the mean log-likelihood of reference answers
(does alignment cost the model its ability to produce good answers to benign prompts?)."""

from __future__ import annotations

import re
from collections.abc import Sequence

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
