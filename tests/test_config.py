"""Run configuration: YAML + dotted overrides, every problem reported at once."""

from __future__ import annotations

import pytest

from fedllm.config import ConfigError, apply_overrides, build_config, load_config


def test_defaults_match_the_papers():
    cfg = build_config({})
    assert (cfg.lora.r, cfg.lora.alpha) == (16, 32)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.fl.algorithm == "fedavg" and cfg.fl.mu == 0.01 and cfg.fl.tau == 1e-3
    assert cfg.model.precision == "auto"


def test_overrides_are_parsed_as_yaml():
    cfg = build_config({}, ["fl.rounds=20", "train.lr=1e-4", "lora.target_modules=[q_proj, v_proj]",
                            "fl.server_lr=null", "train.local_steps=dynamic", "name=x"])
    assert cfg.fl.rounds == 20 and cfg.train.lr == 1e-4 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.local_steps == "dynamic" and cfg.name == "x" and cfg.fl.server_lr is None


def test_all_errors_reported_together_with_their_keys():
    with pytest.raises(ConfigError) as e:
        build_config({"fl": {"rounds": 0, "compat": "flower"}, "train": {"lr": -1, "bogus": 1}})
    msg = str(e.value)
    assert "4 problem(s)" in msg
    for key in ("fl.rounds", "fl.compat", "train.lr", "train.bogus"):
        assert key in msg
    assert "unknown key" in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["fl.rounds"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.y=1"])


def test_local_steps_validation():
    with pytest.raises(ConfigError, match="local_steps"):
        build_config({"train": {"local_steps": 0}})
    with pytest.raises(ConfigError, match="local_steps"):
        build_config({"train": {"local_steps": "sometimes"}})


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fl: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    good = tmp_path / "good.yaml"
    good.write_text("fl:\n  algorithm: scaffold\n")
    assert load_config(good, ["fl.rounds=3"]).fl.algorithm == "scaffold"


def test_registry_names_are_validated():
    with pytest.raises(ConfigError) as e:
        build_config({"fl": {"algorithm": "FedAvg"}, "train": {"objective": "ppo"}, "data": {"template": "x"}})
    msg = str(e.value)
    assert "unknown algorithm 'FedAvg'" in msg and "unknown objective 'ppo'" in msg and "unknown template 'x'" in msg


def test_fl_params_round_trip():
    p = build_config({"fl": {"algorithm": "fedyogi", "compat": "openfedllm", "beta1": 0.5}}).fl.params()
    assert (p.algorithm, p.compat, p.beta1) == ("fedyogi", "openfedllm", 0.5)
