"""The dense-matching presets name registered models and only options those models define."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import matchers
from matchers.base import merge_conf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("preset, model", [("roma", "roma_outdoor"), ("gim_roma", "gim_roma"), ("gim_dkm", "gim_dkm")])
def test_dense_preset_options_are_valid(preset: str, model: str) -> None:
    config = yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text())
    assert config["features"]["name"] == "none"
    options = dict(config["matcher"])
    assert options.pop("name") == model
    cls = matchers.model_class(model)
    conf = merge_conf(cls.default_conf, options, model)  # raises ConfigError on an unknown option
    assert tuple(conf["coarse_res"]) == tuple(cls.default_conf["coarse_res"])  # presets state the official sizes
    assert tuple(conf["upsample_res"]) == tuple(cls.default_conf["upsample_res"])
