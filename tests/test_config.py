"""The one config tree: flags and YAML fill the same objects, one help text per setting, and configs written by
earlier versions stay readable."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from cada.cli import app
from cada.config import (ARMS, AlignConfig, EvalConfig, GenConfig, PoolConfig, Recipe, StudyConfig, TrainConfig,
                         demo_config, describe, load_study)
from cada.errors import CadaError

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_flag_overrides_the_config_only_when_given(tmp_path):
    path = tmp_path / "da.yaml"
    path.write_text("arm: da\ngeneration: {n: 3}\n")
    cfg = AlignConfig.from_yaml(path)
    # what `cada align --config da.yaml` passes for the flags nobody gave: None keeps the file's value
    same = cfg.with_values({"arm": None, "generation.n": None, "pool.limit_per_label": None})
    assert same == cfg and same.arm == "da" and same.generation.n == 3
    changed = cfg.with_values({"generation.n": 5, "pool.limit_per_label": 7})
    assert (changed.arm, changed.generation.n, changed.pool.limit_per_label) == ("da", 5, 7)
    with pytest.raises(CadaError, match=r"^generation\.n: Input should be greater than or equal to 1"):
        cfg.with_values({"generation.n": 0})
    with pytest.raises(CadaError, match=r"da\.yaml:2: generation\.n"):
        path.write_text("arm: da\ngeneration: {n: 0}\n")
        AlignConfig.from_yaml(path)


def test_every_flag_of_align_and_generate_has_its_settings_help_and_no_default():
    command = typer.main.get_command(app)
    align = {p.name: p for p in command.commands["align"].params}
    assert align["arm"].help == describe(AlignConfig, "arm") and align["arm"].default is None
    assert align["limit"].help == describe(PoolConfig, "limit_per_label") and align["limit"].default is None
    assert align["n"].help == describe(GenConfig, "n")
    train = {p.name: p for p in command.commands["train"].params}
    assert train["lr"].help == describe(TrainConfig, "learning_rate") and train["lr"].default is None
    ev = {p.name: p for p in command.commands["eval"].params}
    assert ev["max_new_tokens"].default is None and ev["max_new_tokens"].help == describe(EvalConfig,
                                                                                          "max_new_tokens")
    # every setting of the tree has a help text to give
    for cls in (Recipe, PoolConfig, GenConfig, TrainConfig, EvalConfig):
        assert all(f.description for f in cls.model_fields.values() if not isinstance(f.default, Recipe.__base__)), cls


def test_a_study_folder_from_before_the_rl_arms_is_refused_by_name(tmp_path):
    """A ``config.yaml`` the 0.1 code wrote for ``cada demo`` still validates, but its arms ``cada`` and ``da``
    were DPO recipes then: resuming it would read their finished stages as the RL and SFT arms', so the folder is
    refused with one line, and a config of today passes."""
    import yaml

    from cada.config import check_layout

    old = StudyConfig.model_validate(yaml.safe_load((FIXTURES / "demo-config-0.1.yaml").read_text()))
    assert old.arms == ["cada", "da"] and load_study("demo") == demo_config()
    (tmp_path / "config.yaml").write_text((FIXTURES / "demo-config-0.1.yaml").read_text())
    with pytest.raises(CadaError, match=r"config\.yaml: written before CADA became online RL, when arm\(s\) "
                                        r"cada, da meant DPO recipes .*use a new --output"):
        check_layout(tmp_path / "config.yaml")
    (tmp_path / "config.yaml").write_text(demo_config().to_yaml())
    check_layout(tmp_path / "config.yaml")
    assert old.arm_config("sft-dr").calibration_per_label is None
    with pytest.raises(ValueError, match="arm 'sft-sc' is now da"):
        AlignConfig(arm="sft-sc")


def test_the_arms_table_names_mode_method_and_data():
    assert {a: (ARMS[a].mode, ARMS[a].method, ARMS[a].data or ARMS[a].placement) for a in ARMS} == {
        "cada": ("cases", "rl", "distilled"), "cada-in-prompt": ("cases", "rl", "in_prompt"),
        "dpo-cr": ("cases", "dpo", "cr"), "sft-cr": ("cases", "sft", "cr"), "sft-dr": ("none", "sft", "dr"),
        "da": ("codes", "sft", "sc"), "staged": ("cases", "dpo", "best-worst")}
    assert [a for a in ARMS if ARMS[a].staged] == ["staged"]
    assert [a for a in ARMS if ARMS[a].online] == ["cada", "cada-in-prompt"]


def test_an_old_configs_path_says_where_the_recipe_went(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    with pytest.raises(CadaError, match=r"configs/align-cada.yaml: config file not found \(the shipped configs "
                                        r"moved to recipes/: use recipes/align-cada.yaml\)"):
        AlignConfig.from_yaml("configs/align-cada.yaml")
