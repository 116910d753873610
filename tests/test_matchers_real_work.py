"""benchmarks/matchers_real.py --work: which runs share a work folder, and how their time is counted."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import matchers_real  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def test_variants_of_verification_share_the_front_end_folder_and_a_preset_shares_its_overrides():
    folder = matchers_real.front_end_folder
    preset = folder("temple_sparse", "aliked_lightglue", [])
    assert folder("temple_sparse", "aliked_lightglue", ["database.max_error=4.0"]) == preset
    assert folder("temple_sparse", "aliked_lightglue", ["mapper.name=colmap_global"]) == preset
    # the preset's own value given as an override is the same configuration
    assert folder("temple_sparse", "aliked_lightglue", ["features.rotations=4"]) == preset
    assert folder("temple_sparse", "aliked_lightglue", ["features.rotations=1"]) != preset
    assert folder("temple_sparse", "default", []).startswith("default-")


def test_reused_stages_keep_the_time_of_the_run_that_computed_them(tmp_path):
    """Run 1 computes everything; run 2 (another database option in the same folder) reuses the
    features and matches (computed 0, a fraction of a second to check) and builds its own
    database and model: its time is the front end's recorded time plus its own stages."""
    first = {"time": {"images": 1.0, "features": 100.0, "pairs": 0.5, "matches": 400.0, "database": 5.0,
                      "mapping": 20.0},
             "computed": {"features": 16, "matches": 120, "database": 16, "mapping": 16}}
    assert matchers_real.method_seconds(tmp_path, "a", first) == pytest.approx(526.5)
    second = {"time": {"images": 1.0, "features": 0.01, "pairs": 0.5, "matches": 0.02, "database": 3.0,
                       "mapping": 10.0},
              "computed": {"features": 0, "matches": 0, "database": 16, "mapping": 16}}
    assert matchers_real.method_seconds(tmp_path, "b", second) == pytest.approx(1.0 + 100.0 + 0.5 + 400.0 + 13.0)
    # a rerun of the first method with everything up to date (database and mapper skipped: no time)
    rerun = {"time": {"images": 1.0, "features": 0.01, "pairs": 0.5, "matches": 0.02},
             "computed": {"features": 0, "matches": 0, "database": 0, "mapping": 0}}
    assert matchers_real.method_seconds(tmp_path, "a", rerun) == pytest.approx(526.5)
