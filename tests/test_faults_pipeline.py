"""Faults a pipeline meets before its first stage: it names them in one line and leaves nothing behind."""

from __future__ import annotations

import socket
import time

import pytest

from cada.config import AlignConfig, StudyConfig
from cada.errors import CadaError
from cada.spec import load_spec


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_an_unreachable_server_fails_before_any_stage(tmp_path, tiny_model):
    from cada.pipeline.align import align
    from cada.pipeline.study import run_study

    url = f"http://127.0.0.1:{_closed_port()}/v1"
    t0 = time.perf_counter()
    with pytest.raises(CadaError, match=r"cannot reach the server at http://127\.0\.0\.1:\d+/v1 .*no stage has run"):
        align(AlignConfig(model=tiny_model, base_url=url), tmp_path / "run", show_progress=False)
    with pytest.raises(CadaError, match="cannot reach the server"):
        run_study(StudyConfig(model=tiny_model, base_url=url, arms=[]), tmp_path / "study", show_progress=False)
    assert time.perf_counter() - t0 < 30  # seconds, not the minutes the pools take
    assert not (tmp_path / "run").exists() and not (tmp_path / "study").exists()


def test_a_very_long_case_is_warned_about(tmp_path):
    spec = load_spec()
    long = spec.model_copy(update={"cases": [spec.cases[0].model_copy(update={"request": "word " * 20_000}),
                                             *spec.cases[1:]]})
    warnings = long.long_texts()
    assert len(warnings) == 1 and warnings[0].startswith(f"case {spec.cases[0].id} (request) is 100,000 characters")
    assert spec.long_texts() == []  # the shipped spec has none


def test_spec_validate_prints_the_long_case_warning(tmp_path):
    import shutil

    import yaml
    from typer.testing import CliRunner

    from cada.cli import app
    from cada.spec import DEFAULT_SPEC_DIR

    folder = tmp_path / "spec"
    shutil.copytree(DEFAULT_SPEC_DIR, folder)
    cases = yaml.safe_load((folder / "cases.yaml").read_text())
    items = cases["cases"] if isinstance(cases, dict) else cases
    items[0]["request"] = "word " * 20_000
    (folder / "cases.yaml").write_text(yaml.safe_dump(cases))
    res = CliRunner().invoke(app, ["spec", "validate", str(folder), "--no-overlap"])
    assert res.exit_code == 0 and "warning: case C01 (request) is 99,999 characters" in res.output, res.output
