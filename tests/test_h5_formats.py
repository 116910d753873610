"""hloc's file formats: what we write is what hloc reads, and the reverse.

hloc is not installable here (not on PyPI), so its layout is spelled out in these tests from its
source (hloc 1.5: extract_features.py, match_features.py, utils/io.py, utils/parsers.py): plain h5py
reads like hloc's are the reference.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from recon.io import h5
from recon.io.pairs import read_pairs, unique_pairs, write_pairs


def test_pair_names_follow_hloc():
    assert h5.names_to_pair("a/b.jpg", "c.jpg") == "a-b.jpg/c.jpg"
    assert h5.names_to_pair_old("a/b.jpg", "c.jpg") == "a-b.jpg_c.jpg"


def test_features_round_trip_in_hloc_layout(tmp_path):
    path = tmp_path / "features.h5"
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(0, 500, (40, 2)).astype(np.float32)
    descriptors = rng.normal(size=(128, 40)).astype(np.float32)
    scores = rng.uniform(size=40).astype(np.float32)
    with h5.H5Writer(path) as writer:
        h5.write_features(writer, "sub/dir/img.jpg", keypoints, descriptors, scores, (640, 480), uncertainty=1.5)
    # As hloc reads it: nested groups by the image's relative path.
    with h5py.File(path, "r") as f:
        group = f["sub/dir/img.jpg"]
        np.testing.assert_array_equal(group["keypoints"][()], keypoints)
        assert group["keypoints"].attrs["uncertainty"] == pytest.approx(1.5)
        assert group["descriptors"].shape == (128, 40)
        np.testing.assert_array_equal(group["image_size"][()], [640, 480])
    assert h5.list_names(path) == ["sub/dir/img.jpg"]
    features = h5.read_features(path, "sub/dir/img.jpg")
    np.testing.assert_array_equal(features["scores"], scores)


def test_hloc_fp16_features_are_read(tmp_path):
    """hloc stores fp16 (as_half=True); our readers return float32."""
    path = tmp_path / "feats.h5"
    keypoints = np.array([[1.25, 2.5], [3.0, 4.75]], np.float16)
    with h5py.File(path, "w") as f:
        group = f.create_group("x.png")
        group.create_dataset("keypoints", data=keypoints)
        group.create_dataset("descriptors", data=np.ones((4, 2), np.float16))
    assert h5.read_keypoints(path, "x.png").dtype == np.float32
    np.testing.assert_array_equal(h5.read_keypoints(path, "x.png"), keypoints.astype(np.float32))
    assert h5.read_features(path, "x.png")["descriptors"].dtype == np.float32


def test_matches_round_trip_and_reversed_lookup(tmp_path):
    path = tmp_path / "matches.h5"
    matches0 = np.array([3, -1, 0, 40000, -1], np.int64)  # 40000 would overflow hloc's int16
    scores0 = np.array([0.9, 0, 0.8, 0.7, 0], np.float32)
    with h5.H5Writer(path) as writer:
        h5.write_matches(writer, "a/x.jpg", "b.jpg", matches0, scores0)
    with h5py.File(path, "r") as f:  # hloc's layout: nested group "a-x.jpg/b.jpg"
        assert f["a-x.jpg"]["b.jpg"]["matches0"].dtype == np.int32
        np.testing.assert_array_equal(f["a-x.jpg/b.jpg/matches0"][()], matches0)
    matches, scores = h5.read_matches(path, "a/x.jpg", "b.jpg")
    np.testing.assert_array_equal(matches, [[0, 3], [2, 0], [3, 40000]])
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.7])
    reversed_matches, _ = h5.read_matches(path, "b.jpg", "a/x.jpg")
    np.testing.assert_array_equal(reversed_matches, [[3, 0], [0, 2], [40000, 3]])


def test_old_pair_naming_is_read(tmp_path):
    """Files from hloc < 1.4 name pairs 'name0_name1' in one flat group."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("q.jpg_r.jpg")
        group.create_dataset("matches0", data=np.array([1, -1], np.int16))
        group.create_dataset("matching_scores0", data=np.array([0.5, 0], np.float16))
    matches, scores = h5.read_matches(path, "r.jpg", "q.jpg")
    np.testing.assert_array_equal(matches, [[1, 0]])
    assert scores.dtype == np.float32


def test_writer_never_exposes_a_partial_file(tmp_path):
    """Until close/flush the target keeps its previous content; a crash leaves it intact."""
    path = tmp_path / "features.h5"
    with h5.H5Writer(path) as writer:
        h5.write_features(writer, "a.jpg", np.zeros((1, 2)), None, None, (1, 1))
    with pytest.raises(RuntimeError):
        with h5.H5Writer(path) as writer:
            h5.write_features(writer, "b.jpg", np.zeros((1, 2)), None, None, (1, 1))
            raise RuntimeError("killed")
    # An exception discards the unfinished writes; a hard kill leaves a stale temporary file:
    writer = h5.H5Writer(path)
    h5.write_features(writer, "c.jpg", np.zeros((1, 2)), None, None, (1, 1))
    writer.file.close()  # process dies here: no rename
    assert h5.list_names(path) == ["a.jpg"]
    with h5.H5Writer(path) as reopened:  # the stale temporary file is discarded, not trusted
        assert "c.jpg" not in reopened and "b.jpg" not in reopened


def test_checkpoint_publishes_when_due_and_less_often_for_costly_copies(tmp_path, monkeypatch):
    """checkpoint(): every CHECKPOINT_SECONDS at most, and copying may take at most COPY_SHARE of
    the time - a publish whose copy took 1 s is followed by the next only 1 / 0.05 = 20 s later."""
    clock = [1000.0]
    monkeypatch.setattr(h5.time, "monotonic", lambda: clock[0])
    real_copy = h5.shutil.copyfile

    def slow_copy(source, target):  # the copy "takes" one second of the clock
        clock[0] += 1.0
        return real_copy(source, target)

    monkeypatch.setattr(h5.shutil, "copyfile", slow_copy)
    path = tmp_path / "matches.h5"
    with h5.H5Writer(path) as writer:
        h5.write_features(writer, "a.jpg", np.zeros((1, 2)), None, None, (1, 1))
        assert not writer.checkpoint() and not path.exists()
        clock[0] += h5.H5Writer.CHECKPOINT_SECONDS
        assert writer.checkpoint()
        assert h5.list_names(path) == ["a.jpg"]  # readers see what was written so far
        h5.write_features(writer, "b.jpg", np.zeros((1, 2)), None, None, (1, 1))
        clock[0] += 19.0
        assert not writer.checkpoint()
        clock[0] += 1.0
        assert writer.checkpoint()
        assert h5.list_names(path) == ["a.jpg", "b.jpg"]


def test_global_descriptors_layout(tmp_path):
    path = tmp_path / "global-descriptors.h5"
    with h5.H5Writer(path) as writer:
        h5.write_global_descriptor(writer, "a.jpg", np.arange(4))
        h5.write_global_descriptor(writer, "b.jpg", np.ones(4))
    with h5py.File(path, "r") as f:
        assert f["a.jpg"]["global_descriptor"].shape == (4,)
    np.testing.assert_array_equal(h5.read_global_descriptors(path, ["b.jpg", "a.jpg"]), [np.ones(4), np.arange(4)])


def test_pairs_file_round_trip(tmp_path):
    path = tmp_path / "pairs.txt"
    write_pairs(path, [("a.jpg", "b.jpg"), ("c/d.png", "a.jpg")])
    assert path.read_text() == "a.jpg b.jpg\nc/d.png a.jpg\n"
    assert read_pairs(path) == [("a.jpg", "b.jpg"), ("c/d.png", "a.jpg")]
    assert unique_pairs([("a", "b"), ("b", "a"), ("a", "a"), ("a", "c")]) == [("a", "b"), ("a", "c")]
    path.write_text("only_one_name\n")
    with pytest.raises(ValueError, match="expected 'name0 name1'"):
        read_pairs(path)
