"""The config system: every preset parses, overrides are typed, bad input names its key."""

from pathlib import Path

import pytest

from prx_jax.config import ConfigError, load_config, save_config
from prx_jax.train.__main__ import main as train_main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_presets():
    names = {p.stem for p in CONFIGS}
    assert {"demo", "speedrun-512", "speedrun-1024", "finetune-prx-512"} <= names


def test_presets_ship_inside_the_package():
    """`python -m prx_jax.train` reads the demo from prx_jax/configs (package data, a link to
    configs/ here), so a non-editable install runs the same demo as this checkout."""
    import prx_jax
    from prx_jax.train.__main__ import DEMO

    packaged = Path(prx_jax.__file__).resolve().parent / "configs"
    assert DEMO.parent.resolve() == packaged.resolve() and DEMO.exists()
    assert sorted(p.name for p in packaged.glob("*.yaml")) == [p.name for p in CONFIGS]
    assert DEMO.read_text() == (CONFIGS[0].parent / "demo.yaml").read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_yaml_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    # the keys scripts and docs rely on
    keys = ["train.steps=7", "train.seed=7", "data.batch_size=64", "checkpoint.every=7"]
    cfg2 = load_config(path, ["run_dir=/tmp/x", "validation.every=3", *keys])
    assert (cfg2.run_dir, cfg2.train.steps, cfg2.data.global_batch_size) == ("/tmp/x", 7, 64)


def test_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=3e-4", "data.batch_size=64", "model.axes_dim=[8, 8]"])
    assert cfg.optim.lr == 3e-4 and cfg.data.global_batch_size == 64
    assert cfg.model.axes_dim == (8, 8)


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.lrr=1", "optim.lrr"),
        ("nonsense=1", "nonsense"),
        ("train.steps=abc", "train.steps: expected an integer"),
        ("train.steps=-3", "train.steps must be >= 0"),
        ("optim.name=sgd", "optim.name"),
        ("objective.prediction=eps", "objective.prediction"),
        ("data.global_batch_size=0", "global_batch_size"),
        ("model.remat=maybe", "model.remat: expected true/false"),
        ("train.steps", "must look like key.sub=value"),
        ("validation.demo_prompts=0", "validation.demo_prompts must be >= 1"),
        ("mesh.cpu_devices=-2", "mesh.cpu_devices must be >= 0"),
    ],
)
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_decaying_schedules_end_with_the_run_unless_told():
    cfg = load_config(None, ["optim.schedule=wsd", "train.steps=900", "optim.warmup_steps=50"])
    assert cfg.optim.total_steps == 900
    cfg = load_config(
        None,
        [
            "optim.schedule=cosine",
            "train.steps=900",
            "optim.total_steps=600",
            "optim.warmup_steps=9",
        ],
    )
    assert cfg.optim.total_steps == 600
    assert load_config(None, ["optim.schedule=wsd", "train.steps=3"]).optim.total_steps == 1001
    assert load_config(None, ["train.steps=900"]).optim.total_steps is None  # constant


def test_cli_reports_config_errors(capsys):
    assert train_main(["optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
