"""Configs: presets, typed defaults in code, --set overrides, and errors that name the bad key."""
from __future__ import annotations

import pytest

from matchers.base import ConfigError
from recon.config import CONFIG_DIR, load_config


def test_default_preset_fills_every_option():
    config = load_config("default")
    assert config["features"]["name"] == "sift"
    assert config["features"]["max_num_features"] == 8192  # from SIFT.default_conf, not the YAML
    assert config["mapper"]["name"] == "colmap_incremental"
    assert config["database"]["camera_mode"] == "auto"
    assert config["device"] == "auto" and config["seed"] == 0


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_shipped_preset_is_valid(preset):
    config = load_config(preset)
    assert {"features", "matcher", "pairs", "priors", "mapper", "database"} <= set(config)


def test_overrides_are_typed():
    config = load_config("default", ["matcher.ratio_threshold=0.9", "features.upright=true",
                                     "features.max_num_features=100", "seed=3"])
    assert config["matcher"]["ratio_threshold"] == 0.9
    assert config["features"]["upright"] is True
    assert config["features"]["max_num_features"] == 100
    assert config["seed"] == 3


def test_switching_a_choice_drops_the_presets_options_for_it():
    config = load_config("default", ["mapper.name=colmap_global"])
    assert config["mapper"]["name"] == "colmap_global"
    assert "init_min_num_inliers" not in config["mapper"]


@pytest.mark.parametrize("override, message", [
    ("matcher.ratio_treshold=0.9", "unknown option 'ratio_treshold'"),
    ("mapperr.name=x", "unknown config key"),
    ("mapper.name=nonexistent", "unknown choice 'nonexistent'"),
    ("features.max_num_features=many", "expected an integer"),
    ("features.name=nearest_neighbor", "features takes extractor models"),
    ("novalue", "stage.key=value"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises((ConfigError, KeyError), match=message):
        load_config("default", [override])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="default"):
        load_config("no_such_preset")


def test_yaml_file_with_unknown_option_is_rejected(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("features:\n  name: sift\n  max_features: 10\n")
    with pytest.raises(ConfigError, match="unknown option 'max_features'"):
        load_config(path)


def test_feature_rotations_outside_the_choices_are_rejected_before_any_work():
    with pytest.raises(ConfigError, match="features.rotations must be one of"):
        load_config("default", ["features.rotations=3"])
