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


def test_fl_section_is_the_algorithms_params():
    from fedllm.fl import FLParams, build_algorithm

    p = build_config({"fl": {"algorithm": "fedyogi", "compat": "openfedllm", "beta1": 0.5}}).fl
    assert isinstance(p, FLParams)  # one definition: the config section is what build_algorithm takes
    assert (p.algorithm, p.compat, p.beta1) == ("fedyogi", "openfedllm", 0.5)
    assert build_algorithm(p, 3).optimizer.name == "yogi"


def test_float_settings_must_be_finite():
    with pytest.raises(ConfigError) as e:
        build_config({}, ["train.lr=.nan", "fl.server_lr=.inf", "fl.mu=-.inf", "train.max_grad_norm=.nan"])
    msg = str(e.value)
    assert "4 problem(s)" in msg
    for key in ("train.lr", "fl.server_lr", "fl.mu", "train.max_grad_norm"):
        assert f"{key}: Input should be a finite number" in msg


def test_unknown_key_hint_names_a_real_command():
    with pytest.raises(ConfigError, match=r"fl.bogus: unknown key \(check spelling; `fedllm config` prints every key\)"):
        build_config({"fl": {"bogus": 1}})


def test_dataset_and_build_options_are_validated_with_the_rest():
    with pytest.raises(ConfigError) as e:
        build_config({"data": {"dataset": "fed-pycode", "build": {"min_sampels": 3}}, "fl": {"rounds": 0}})
    msg = str(e.value)
    assert "2 problem(s)" in msg and "fl.rounds" in msg
    assert "data.build: source 'fed-pycode' has no build option(s) ['min_sampels']" in msg
    with pytest.raises(ConfigError, match="only apply to a registered dataset, not to the file 'my.json'"):
        build_config({"data": {"dataset": "my.json", "build": {"x": 1}}})
    with pytest.raises(ConfigError, match="data.dataset: .*name a registered dataset"):
        build_config({"data": {"dataset": " "}})


def test_component_options_are_typed():
    cfg = build_config({"fl": {"aggregator": "trimmed_mean", "transforms": [{"name": "clip", "max_norm": 2}]}})
    assert cfg.fl.aggregator == {"name": "trimmed_mean", "trim_ratio": 0.2}  # defaults filled in, written to config.yaml
    assert cfg.fl.transforms == [{"name": "clip", "max_norm": 2.0, "where": "client"}]
    with pytest.raises(ConfigError) as e:
        build_config({"fl": {"aggregator": {"name": "krum", "byzantin": 1},
                             "transforms": [{"name": "clip"}, {"name": "noise"}]}})
    msg = str(e.value)
    assert "2 problem(s)" in msg  # one per key; the list's items each name their index
    assert "fl.aggregator: Value error, aggregator 'krum': byzantin: Extra inputs are not permitted" in msg
    assert "[0] update transform 'clip': max_norm: Field required; [1] unknown update transform 'noise'" in msg


def test_warnings_name_settings_without_effect():
    cfg = build_config({"fl": {"algorithm": "fedadam", "mu": 0.1}, "train": {"momentum": 0.5, "epochs": 2}})
    assert cfg.warnings() == ["fl.mu=0.1 is ignored by fedadam", "train.momentum=0.5 is ignored by train.optimizer=adamw",
                              "train.epochs=2.0 is ignored: train.local_steps is fixed (10), not 'dynamic'"]
    assert build_config({"train": {"optimizer": "sgdm", "momentum": 0.5}}).warnings() == []


def test_every_shipped_config_validates() -> None:
    from pathlib import Path

    from fedllm.config import load_config

    root = Path(__file__).resolve().parent.parent / "configs"
    shipped = sorted(root.glob("*.yaml"))
    assert len(shipped) >= 3
    for path in shipped:  # a ConfigError names the file and every problem
        assert load_config(path).fl.rounds > 0
