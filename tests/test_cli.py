"""The command line: one clear line and a non-zero exit on bad input, nothing half-written."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from recon.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recon", *args], capture_output=True, text=True, timeout=300)


def test_every_command_has_help():
    for command in ("reconstruct", "pairs", "match", "demo"):
        result = run(command, "--help")
        assert result.returncode == 0 and "usage: recon" in result.stdout
    result = run("evaluate", "--help")
    assert result.returncode == 0 and "--gt" in result.stdout
    result = run("render", "--help")
    assert result.returncode == 0 and "--depth" in result.stdout


def test_missing_folder_is_one_line_and_nonzero(tmp_path):
    result = run("reconstruct", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and "does not exist" in error_lines[0]
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_empty_folder_and_single_image(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["reconstruct", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no images" in capsys.readouterr().err and not (tmp_path / "out").exists()
    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(one / "a.png")
    (one / "broken.jpg").write_bytes(b"not a jpeg")
    result = run("reconstruct", str(one), str(tmp_path / "out1"))
    assert result.returncode == 2
    assert "only 1 readable" in result.stderr and "broken.jpg" in result.stderr  # the warning names it
    assert not (tmp_path / "out1").exists()


def test_unknown_config_key_is_named(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    code = main(["reconstruct", str(tmp_path / "imgs"), str(tmp_path / "out"), "--set", "matcher.ratio=0.7"])
    assert code == 2
    assert "unknown option 'ratio'" in capsys.readouterr().err


def test_evaluate_missing_model_fails_cleanly(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing"), "--gt", str(tmp_path / "gt")]) == 2


def test_pairs_of_a_small_collection_are_all_pairs_without_features(tmp_path):
    """The default graph matches every pair of a 6-image folder, so ``recon pairs`` extracts no
    features for it."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    assert main(["pairs", str(images), str(tmp_path / "out")]) == 0
    lines = (tmp_path / "out" / "pairs.txt").read_text().splitlines()
    assert len({frozenset(line.split()) for line in lines}) == len(lines) == 15
    assert not (tmp_path / "out" / "features.h5").exists()


def test_openmp_threads_sleep_at_barriers_unless_the_user_chose():
    """recon sets OMP_WAIT_POLICY=PASSIVE before torch is imported (see recon/__init__.py), and
    leaves a user's own choice alone."""
    code = "import os, recon, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, timeout=120)
    assert default.stdout.strip() == "PASSIVE"
    assert chosen.stdout.strip() == "ACTIVE"
