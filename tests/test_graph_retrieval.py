"""Other pair strategies: global retrieval, sequential with loop closures, covisibility, poses."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest
import torch

from recon.graph import PAIR_STRATEGIES, PairsContext
from recon.graph.retrieval import top_k_pairs
from recon.io.h5 import H5Writer, write_global_descriptor


def run(strategy: str, names: list[str], tmp_path, **overrides) -> set[frozenset]:
    context = PairsContext(image_dir=tmp_path, output_dir=tmp_path, seed=0)
    conf = PAIR_STRATEGIES.conf(strategy, overrides)
    return {frozenset(p) for p in PAIR_STRATEGIES.get(strategy).function(names, conf, context)}


def test_top_k_pairs_excludes_self_and_disallowed():
    similarity = torch.tensor([[9.0, 1, 2], [1, 9, 3], [2, 3, 9]])
    assert top_k_pairs(similarity, 1).tolist() == [[0, 2], [1, 2]]
    allowed = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert top_k_pairs(similarity, 1, allowed).tolist() == [[0, 1]]


def write_globals(path, descriptors: np.ndarray) -> list[str]:
    names = [f"frame{i:03d}.jpg" for i in range(len(descriptors))]
    with H5Writer(path) as writer:
        for name, d in zip(names, descriptors):
            write_global_descriptor(writer, name, d / np.linalg.norm(d))
    return names


def test_retrieval_takes_the_most_similar_global_descriptors(tmp_path):
    base = np.eye(4, dtype=np.float32)
    names = write_globals(tmp_path / "global-descriptors.h5", np.concatenate([base, base + 0.1 * np.roll(base, 1, 1)]))
    pairs = run("retrieval", names, tmp_path, num_matched=1)
    assert pairs == {frozenset((names[i], names[i + 4])) for i in range(4)}


def test_sequential_retrieval_adds_loop_closures(tmp_path):
    rng = np.random.default_rng(0)
    descriptors = rng.standard_normal((10, 16)).astype(np.float32)
    descriptors[9] = descriptors[0] + 0.01  # the video comes back to its start
    names = write_globals(tmp_path / "g.h5", descriptors)
    pairs = run("sequential_retrieval", names, tmp_path, overlap=2, loop_closures=1,
                global_descriptors=str(tmp_path / "g.h5"))
    window = {frozenset((names[i], names[j])) for i in range(10) for j in range(i + 1, min(i + 3, 10))}
    assert window <= pairs
    assert frozenset((names[0], names[9])) in pairs
    assert len(pairs - window) <= 10  # one loop closure per frame at most
    assert run("sequential_retrieval", names, tmp_path, overlap=2, loop_closures=0) == window


def tiny_model(path, centres, rotations, tracks) -> list[str]:
    """A pycolmap model: one camera per (centre, rotation), 3D points observed per ``tracks``."""
    model = pycolmap.Reconstruction()
    model.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_PINHOLE", width=100, height=100,
                                                      params=[100, 50, 50], camera_id=1))
    names = []
    for i, (centre, rotation) in enumerate(zip(centres, rotations)):
        image = pycolmap.Image(name=f"im{i}.jpg", camera_id=1, image_id=i + 1)
        image.points2D = pycolmap.Point2DList([pycolmap.Point2D(np.array([10.0 + j, 10.0])) for j in range(len(tracks))])
        rotation = np.asarray(rotation, dtype=np.float64)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ np.asarray(centre, dtype=np.float64))
        model.add_image_with_trivial_frame(image, pose)
        names.append(image.name)
    for j, seen in enumerate(tracks):
        track = pycolmap.Track()
        for i in seen:
            track.add_element(i + 1, j)
        model.add_point3D(np.array([0.0, 0.0, 5.0]), track, np.zeros(3, np.uint8))
    model.write(str(path))
    return names


def test_covisibility_pairs_follow_shared_points(tmp_path):
    tracks = [(0, 1), (0, 1), (1, 2), (2, 3), (2, 3)]  # shared points: (0,1)=2, (1,2)=1, (2,3)=2
    names = tiny_model(tmp_path, [(i, 0, 0) for i in range(4)], [np.eye(3)] * 4, tracks)
    one = run("covisibility", names, tmp_path, model=str(tmp_path), num_matched=1)
    assert one == {frozenset(("im0.jpg", "im1.jpg")), frozenset(("im2.jpg", "im3.jpg"))}
    two = run("covisibility", names, tmp_path, model=str(tmp_path), num_matched=2)
    assert two == one | {frozenset(("im1.jpg", "im2.jpg"))}


def test_pose_pairs_take_nearest_cameras_looking_the_same_way(tmp_path):
    turned = np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])  # 90 degrees about y
    centres = [(0, 0, 0), (1, 0, 0), (3, 0, 0), (10, 0, 0), (0.2, 0, 0)]
    names = tiny_model(tmp_path, centres, [np.eye(3)] * 4 + [turned], [(0, 1)])
    pairs = run("poses", names, tmp_path, model=str(tmp_path), num_matched=1, rotation_threshold=30.0)
    assert pairs == {frozenset(("im0.jpg", "im1.jpg")), frozenset(("im1.jpg", "im2.jpg")),
                     frozenset(("im2.jpg", "im3.jpg"))}


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sparse model"):
        run("covisibility", ["a.jpg"], tmp_path, model=str(tmp_path / "nope"))
