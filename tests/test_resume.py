"""A run killed during matching resumes without redoing finished work and ends with the same result."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np

from helpers import temple_subset
from recon.config import load_config
from recon.io import h5
from recon.pipeline import Pipeline, reconstruct

OVERRIDES = ["matcher.batch_size=1", "device=cpu"]

KILLER = textwrap.dedent("""
    import os, signal, sys
    from recon.io import h5
    from recon.config import load_config
    from recon.pipeline import reconstruct
    h5.H5Writer.CHECKPOINT_SECONDS = 0.0     # publish after every pair,
    h5.H5Writer.COPY_SHARE = float("inf")    # however long the copies take
    original, written = h5.write_matches, []
    def write_then_die(*args, **kwargs):
        if len(written) == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)   # a hard kill: no cleanup code runs
        written.append(args[1:3])
        original(*args, **kwargs)
    h5.write_matches = write_then_die
    reconstruct(sys.argv[1], sys.argv[2], load_config("default", {overrides!r}))
""").format(overrides=OVERRIDES)


def test_killed_matching_resumes_to_the_same_result(tmp_path, monkeypatch):
    images = temple_subset(tmp_path / "images", count=5)
    reference = Pipeline(images, tmp_path / "reference", load_config("default", OVERRIDES))
    reference.find_images(), reference.compute_priors(), reference.extract(), reference.select_pairs(), reference.match()

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", KILLER, str(images), str(out), "4"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == -9, result.stderr[-2000:]
    # What the killed run left is complete and valid: all features, the four published pairs,
    # and no database or model built from partial matches.
    assert len(h5.list_names(out / "features.h5")) == 5
    with h5py.File(out / "matches.h5", "r") as f:
        assert sum(1 for _ in f.values() for _ in _.values()) == 4
    assert not (out / "database.db").exists() and not (out / "sparse").exists()

    written, extracted = [], []
    write_matches, write_features = h5.write_matches, h5.write_features
    monkeypatch.setattr(h5, "write_matches", lambda *a, **k: (written.append(a[1:3]), write_matches(*a, **k)))
    monkeypatch.setattr(h5, "write_features", lambda *a, **k: (extracted.append(a[1]), write_features(*a, **k)))
    model, report = reconstruct(images, out, load_config("default", OVERRIDES))
    assert extracted == []                 # no image re-extracted
    assert len(written) == 10 - 4          # only the unfinished pairs matched
    for name0, name1 in reference.pairs:
        ours, _ = h5.read_matches(out / "matches.h5", name0, name1)
        theirs, _ = h5.read_matches(reference.matches_path, name0, name1)
        np.testing.assert_array_equal(ours, theirs)
    assert report["num_registered"] == 5
