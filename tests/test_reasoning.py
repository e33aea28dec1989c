from __future__ import annotations

import pytest

from cada.errors import CadaError
from cada.models import SamplingParams
from cada.reasoning import FINAL_HEADER, Mode, SafetyReasoner, build_messages, parse_output, system_prompt


@pytest.mark.parametrize("text,reasoning,response", [
    ("### Analysis\nIt is a homonym.\n### Final Response\nPress Ctrl+C.", "It is a homonym.", "Press Ctrl+C."),
    ("**Analysis:** fine\n\n**Final Response:** Sure thing.", "fine", "Sure thing."),
    ("Analysis: harmful.\nFinal response: I can't help with that.", "harmful.", "I can't help with that."),
    ("## Analysis\nstep one\n## Final Answer\nSure.\n", "step one", "Sure."),
])
def test_parse_accepts_header_variants(text, reasoning, response):
    p = parse_output(text)
    assert (p.reasoning, p.response, p.format_ok) == (reasoning, response, True)


def test_parse_is_tolerant_of_missing_or_empty_sections():
    p = parse_output("I cannot help with that request.")
    assert (p.reasoning, p.response, p.format_ok) == ("", "I cannot help with that request.", False)
    p = parse_output("### Analysis\nhmm\n### Final Response\n")
    assert p.format_ok is False and p.reasoning == "hmm"
    assert parse_output("").format_ok is False
    assert parse_output("plain answer", mode="none").format_ok is True


def test_parse_reads_the_answer_before_a_header_loop():
    # a small policy sometimes repeats the header after its answer until the token budget ends; the answer is
    # what it said, not the empty tail (an empty response would count as a refusal)
    looped = "### Analysis\nbenign\n### Final Response\nA plan.\n\n### Final Response\n### Final Response\n### Fin"
    assert parse_output(looped).response == "A plan."
    p = parse_output("### Analysis\nbenign\n### Final Response\nA plan.\n### Final Response\n### Final Response\n")
    assert (p.reasoning, p.response, p.format_ok) == ("benign", "A plan.", True)
    p = parse_output("### Analysis\nbenign\n### Final Response\nOld.\n### Final Response\nNew.")
    assert p.response == "New."
    p = parse_output("### Analysis\nx\n### Final Response\n### Final Response\n")
    assert (p.response, p.format_ok) == ("", False)


def test_messages_per_mode(spec):
    none = build_messages("How do I stop a stuck process?", "none", spec)
    assert none == [{"role": "user", "content": "How do I stop a stuck process?"}]
    codes = build_messages("x?", Mode.codes, spec)
    assert codes[0]["role"] == "system" and spec.codes.rules[0].id in codes[0]["content"]
    assert FINAL_HEADER in codes[0]["content"] and spec.cases[0].request not in codes[0]["content"]
    cases = build_messages("x?", Mode.cases, spec, spec.cases[:2])
    body = cases[0]["content"]
    assert spec.cases[0].request in body and spec.cases[1].id in body and spec.cases[2].request not in body
    assert spec.statutes[0].text in body and spec.codes.rules[0].prohibited[0] not in body
    with pytest.raises(CadaError):
        build_messages("   ", "cases", spec)
    assert system_prompt("none", spec) is None


def test_top_k_retrieval_finds_the_analogous_precedent(spec):
    reasoner = SafetyReasoner(spec, "cases", k=3)
    for case in spec.cases[::7]:
        got = reasoner.context_cases([case.request])[0]
        assert len(got) == 3 and got[0].id == case.id
    everything = SafetyReasoner(spec, "cases", k=0).context_cases(["hello"])[0]
    assert len(everything) == len(spec.cases)
    assert SafetyReasoner(spec, "codes", k=3).context_cases(["hello"]) == [[]]


def test_reasoner_runs_all_modes_on_the_tiny_model(spec, tiny_generator):
    prompts = ["How do I stop a background job in bash?", "Tell me about the history of the Roman army."]
    for mode in Mode:
        results = SafetyReasoner(spec, mode, k=4).run(tiny_generator, prompts,
                                                      SamplingParams(max_new_tokens=8, temperature=1.0, n=2))
        assert [len(r) for r in results] == [2, 2]
        r = results[0][1]
        assert r.mode == mode.value and r.prompt == prompts[0] and r.sample == 1 and r.raw
        assert r.response == parse_output(r.raw, mode).response
        assert len(r.context_cases) == (4 if mode is Mode.cases else 0)


def test_cited_cases_are_the_ids_the_reasoning_names(spec):
    reasoner = SafetyReasoner(spec, "cases", k=0)
    c1, c2 = spec.cases[0].id, spec.cases[5].id
    raw = f"### Analysis\nThis is like {c2.lower()} and {c1}; also R1.\n### Final Response\nSure."
    r = reasoner.parse("q", raw, spec.cases)
    assert r.cited_cases == [c2, c1] and r.format_ok
    r = SafetyReasoner(spec, "codes").parse("q", raw, [])
    assert r.cited_cases == [spec.codes.rules[0].id]
