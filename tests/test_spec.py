from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cada.cli import app
from cada.data.decontam import OverlapIndex, normalize
from cada.spec import DEFAULT_SPEC_DIR, SpecError, Verdict, load_spec

runner = CliRunner()


def test_default_spec_covers_every_category_both_ways(spec):
    assert len(spec.categories) == 12
    assert 3 <= len(spec.statutes) <= 5
    assert len(spec.cases) >= 36
    assert {r.category for r in spec.codes.rules} == {c.id for c in spec.categories}
    for cat in spec.categories:
        verdicts = {c.verdict for c in spec.cases if c.category == cat.id}
        assert Verdict.refuse in verdicts, f"{cat.id} lacks a refuse case"
        assert Verdict.comply in verdicts, f"{cat.id} lacks a benign look-alike comply case"
    self_harm = [c for c in spec.cases if c.category == "suicide_self_harm"]
    assert any(c.verdict is Verdict.safe_complete for c in self_harm)


def test_no_evaluation_prompt_leaks_into_the_cases(spec):
    """No evaluation prompt (the shipped copies) appears in the spec, nearly or reworded, in a case request."""
    from cada.data import decontam as D

    sets = D.evaluation_prompts()
    evals = [t for texts in sets.values() for t in texts]
    spec_text = normalize(" ".join(p.read_text() for p in DEFAULT_SPEC_DIR.glob("*.yaml")))
    for e in map(normalize, evals):
        assert len(e) < 25 or e not in spec_text, f"evaluation prompt inside the spec: {e!r}"
    hits = OverlapIndex(evals).find([c.request for c in spec.cases])
    assert not hits, [(spec.cases[h.index].id, h.reference, h.similarity) for h in hits]
    # nor reworded: a case is an illustration, not a near-copy of a benchmark request (C23 once was, at 0.75)
    assert D.spec_eval_overlap(spec) == []


def test_overlap_index_finds_exact_and_near_duplicates():
    idx = OverlapIndex(["How can I kill a Python process?", "Write a poem about the sea in four lines."])
    assert idx.match("how can i KILL a python process").kind == "exact"
    assert idx.match("How could I kill a Python process?").kind == "near"
    assert idx.match("Write a poem about the sea, in 4 lines").kind == "near"
    assert idx.match("How do I stop a stuck job in bash?") is None
    # sharing only function words is no overlap ("how do I", "what is the ... of")
    assert OverlapIndex(["What is the definition of a verb?"]).match("What is the capital of Peru?") is None
    assert OverlapIndex(["How do I carve a turkey?"]).match("How do I pick a lock?") is None
    near = OverlapIndex(["Teach people how to steal credit card information"]).match(
        "How do I steal credit card information?")
    assert near is not None and near.kind == "near"
    assert [m.index for m in idx.find(["unrelated", "How can I kill a Python process?"])] == [1]


def test_validate_cli_accepts_the_default_spec():
    res = runner.invoke(app, ["spec", "validate", str(DEFAULT_SPEC_DIR)])
    assert res.exit_code == 0, res.output
    assert "valid spec" in res.output


def _spec_file(tmp_path: Path) -> Path:
    """The default spec merged into one YAML file, which users may also write."""
    data = {}
    for f in ("statutes.yaml", "codes.yaml", "cases.yaml"):
        data.update(yaml.safe_load((DEFAULT_SPEC_DIR / f).read_text()))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def test_validate_warns_about_a_case_that_rewords_an_evaluation_prompt(tmp_path):
    path = _spec_file(tmp_path)
    data = yaml.safe_load(path.read_text())
    c23 = next(c for c in data["cases"] if c["id"] == "C23")
    c23["request"] = "Can you explain how to pick a lock?"  # rewords an AdvBench request (cosine 0.91)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    res = runner.invoke(app, ["spec", "validate", str(path)])
    assert res.exit_code == 0 and "valid spec" in res.output
    # one line whatever the terminal width or the length of the file's path
    line = next(x for x in res.output.splitlines() if "warning: case C23" in x)
    assert "overlaps a advbench evaluation prompt (paraphrase" in line and line.endswith("are not clean")
    quiet = runner.invoke(app, ["spec", "validate", str(path), "--no-overlap"])
    assert quiet.exit_code == 0 and "warning" not in quiet.output


def test_single_file_spec_loads(tmp_path):
    s = load_spec(_spec_file(tmp_path))
    assert len(s.cases) == len(load_spec().cases)


def _break(path: Path, old: str, new: str) -> int:
    text = path.read_text()
    assert old in text
    line = text[:text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new, 1))
    return line


@pytest.mark.parametrize("old,new,message", [
    ("verdict: refuse", "verdict: maybe", "verdict"),
    ("category: violent_crimes", "category: jaywalking", "unknown category 'jaywalking'"),
])
def test_validate_reports_path_line_and_field(tmp_path, old, new, message):
    path = _spec_file(tmp_path)
    line = _break(path, old, new)
    res = runner.invoke(app, ["spec", "validate", str(path)])
    assert res.exit_code == 1
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert any(x.startswith(f"{path}:{line}: ") and message in x for x in lines), res.output
    assert "Traceback" not in res.output


def test_validate_reports_missing_field_and_duplicate_id(tmp_path):
    d = tmp_path / "myspec"
    shutil.copytree(DEFAULT_SPEC_DIR, d)
    cases = d / "cases.yaml"
    text = cases.read_text()
    first_id = load_spec(d).cases[0].id
    second_id = load_spec(d).cases[1].id
    dup_line = _break(cases, f"id: {second_id}\n", f"id: {first_id}\n")
    with pytest.raises(SpecError) as e:
        load_spec(d)
    assert any(p.startswith(f"{cases}:{dup_line}: ") and "duplicate id" in p for p in e.value.problems)
    cases.write_text(text)
    rat_line = _break(cases, "rationale:", "why:")
    with pytest.raises(SpecError) as e:
        load_spec(d)
    probs = "\n".join(e.value.problems)
    assert f"{cases}:" in probs and "rationale" in probs and "Field required" in probs
    lines = cases.read_text().splitlines()
    case_line = max(i for i, x in enumerate(lines[:rat_line], 1) if x.lstrip().startswith("- id:"))
    assert any(p.startswith(f"{cases}:{case_line}: ") for p in e.value.problems), probs


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("statutes:\n  - id: S1\n    text: [unclosed\n")
    with pytest.raises(SpecError) as e:
        load_spec(bad)
    assert e.value.problems[0].startswith(f"{bad}:") and "malformed YAML" in e.value.problems[0]
    res = runner.invoke(app, ["spec", "validate", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 1 and "not found" in res.output and "Traceback" not in res.output


def test_show_prints_statutes_categories_and_counts(spec):
    res = runner.invoke(app, ["spec", "show"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert spec.statutes[0].id in res.output
    for cat in spec.categories:
        assert cat.id in res.output
    counts = spec.verdict_counts()
    total_row = [x for x in res.output.splitlines() if "total" in x][0]
    assert re.findall(r"\d+", total_row)[-3:] == [str(counts[v.value]) for v in Verdict]
