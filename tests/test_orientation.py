"""A common in-plane orientation for non-rotation-invariant features (recon.match.orientation)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from recon.io import h5

from recon.match.orientation import (anchor_labels, candidate_turns, rotate_image, rotation_votes,
                                     solve_orientations, unrotate_keypoints)


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_keypoints_found_in_a_rotated_image_map_back_to_the_original(turns):
    image = np.zeros((5, 8), np.uint8)
    image[1, 6] = 255  # x = 6, y = 1
    rotated = rotate_image(image, turns)
    y, x = np.argwhere(rotated)[0]
    assert rotated.shape == ((5, 8) if turns % 2 == 0 else (8, 5))
    np.testing.assert_array_equal(unrotate_keypoints(np.array([[x, y]], float), turns, (8, 5)), [[6, 1]])


def test_candidates_are_equal_steps_of_a_full_turn():
    assert candidate_turns(1) == [0]
    assert candidate_turns(2) == [0, 2]
    assert candidate_turns(4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="rotations must be one of"):
        candidate_turns(3)


def test_chained_votes_recover_orientations_up_to_the_majority():
    truth = np.array([1, 3, 1, 0, 1])  # candidate index that makes each image upright
    pairs = np.array([(i, j) for i in range(5) for j in range(i + 1, 5)])
    best = (truth[pairs[:, 1]] - truth[pairs[:, 0]]) % 4
    margin = np.full(len(pairs), 50)
    wrong = 3  # one weak, inconsistent vote must lose to the strong ones
    best[wrong], margin[wrong] = (best[wrong] + 1) % 4, 5
    # votes are relative: the common offset leaves the majority of the images unrotated
    np.testing.assert_array_equal(solve_orientations(5, 4, pairs, best, margin), (truth - 1) % 4)


def test_images_without_a_confident_vote_stay_unrotated():
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    labels = solve_orientations(3, 2, pairs, np.array([1, 1, 0]), np.array([0, 0, 0]))
    np.testing.assert_array_equal(labels, [0, 0, 0])


def test_images_already_extracted_fix_the_common_offset():
    """Votes give rotations up to a common offset; images already extracted (known >= 0) keep
    theirs, so the offset is the one most of them agree with, and a disagreeing one is kept."""
    labels = np.array([0, 0, 1, 3, 2])          # a fresh solution: 0 and 1 upright
    known = np.array([1, 1, 3, -1, -1])         # 0 and 1 were extracted one step turned, 2 at 3
    np.testing.assert_array_equal(anchor_labels(labels, known, 4), [1, 1, 3, 0, 3])
    np.testing.assert_array_equal(anchor_labels(labels, np.full(5, -1), 4), labels)


def test_descriptor_votes_find_which_rotation_of_each_image_matches_the_others():
    """Three views of one scene. A CNN's descriptors of the scene depend on how far it is turned:
    ``turned[k]`` are the descriptors of the scene turned by k candidate steps, and candidate r of
    image i (upright at candidate ``truth[i]``) sees ``turned[r - truth[i]]``, with noise and in
    another keypoint order."""
    generator = torch.Generator().manual_seed(0)
    count, dim, truth = 64, 32, [0, 1, 1]
    turned = torch.nn.functional.normalize(torch.randn(2, count, dim, generator=generator), dim=-1)
    images = torch.stack([torch.stack([
        torch.nn.functional.normalize(turned[(r - truth[i]) % 2] + 0.1 * torch.randn(count, dim, generator=generator),
                                      dim=1)[torch.randperm(count, generator=generator)]
        for r in range(2)]) for i in range(3)])                                    # (3 images, 2 candidates, K, D)
    pairs, best, margin = rotation_votes(images)
    np.testing.assert_array_equal(pairs, [[0, 1], [0, 2], [1, 2]])
    np.testing.assert_array_equal(best, [1, 1, 0])  # relative: truth[j] - truth[i]
    assert np.all(margin > count // 2)
    # one consistent answer that turns the fewest images: image 0 by one step, not 1 and 2
    np.testing.assert_array_equal(solve_orientations(3, 2, pairs, best, margin), [1, 0, 0])


def test_aliked_on_the_temple_ring_extracts_the_upside_down_view_turned(tmp_path, monkeypatch):
    """templeSparseRing's view 14 was photographed upside down relative to its ring neighbours 3
    and 4 (the gantry's other latitude). ALIKED is not rotation invariant: with ``rotations: 2``
    the extractor must turn 14 (or both others) by 180 degrees, and then plain mutual nearest
    neighbours between 3 and 14 agree with the ground-truth epipolar geometry, keypoints being
    back in the original images' pixels (with ``rotations: 1`` the same pair gives no mutual
    ratio-test match at all)."""
    from recon.config import stage_defaults
    from recon.datasets.ground_truth import load_ground_truth
    from recon.io import h5
    from recon.match import extract_features
    from matchers.nearest_neighbor import mutual_check, nearest_neighbours
    from tests.conftest import shared_path

    monkeypatch.setenv("RECON_WEIGHTS", str(shared_path("weights")))
    root = shared_path("data", "middlebury_temple", "templeSparseRing")
    names = ["templeSR0003.png", "templeSR0014.png"]
    conf = {**stage_defaults("features", "aliked"), "name": "aliked", "resize_max": 320, "rotations": 2,
            "max_num_keypoints": 512}
    extract_features(root, names, conf, tmp_path / "features.h5", torch.device("cpu"))
    feats = {n: h5.read_features(tmp_path / "features.h5", n) for n in names}
    desc = [torch.from_numpy(feats[n]["descriptors"].T.copy())[None] for n in names]
    similarity = desc[0] @ desc[1].transpose(1, 2)
    matches = mutual_check(nearest_neighbours(similarity, 0.8, None)[0],
                           nearest_neighbours(similarity.transpose(1, 2), 0.8, None)[0])[0]
    valid = matches > -1
    k0 = feats[names[0]]["keypoints"][valid.numpy()]
    k1 = feats[names[1]]["keypoints"][matches[valid].numpy()]
    truth = load_ground_truth(root / "gt_colmap_text")
    a, b = truth[names[0]], truth[names[1]]
    rotation = b.rotation @ a.rotation.T
    t = b.translation - rotation @ a.translation
    essential = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ rotation
    fundamental = np.linalg.inv(b.K).T @ essential @ np.linalg.inv(a.K)
    x0 = np.c_[k0 + 0.5, np.ones(len(k0))]  # COLMAP pixel convention, like the ground truth
    x1 = np.c_[k1 + 0.5, np.ones(len(k1))]
    lines = x0 @ fundamental.T
    distance = np.abs(np.sum(x1 * lines, 1)) / np.hypot(lines[:, 0], lines[:, 1])
    right = float(np.mean(distance < 3.0)) if len(distance) else 0.0
    assert valid.sum() >= 30 and right > 0.8, f"{int(valid.sum())} matches, {right:.0%} within 3 px of the epipolar line"



def test_a_new_image_costs_only_its_own_candidates_and_extraction(tmp_path, monkeypatch):
    """The voting candidates are cached beside features.h5 and extracted images are never
    extracted again: two upright temple views cost 2 x 2 candidates + 2 extractions; adding the
    upside-down view 14 costs its 2 candidates + its extraction, leaves the first two features
    untouched and turns 14 by 180 degrees (its rotation is stored with its features); a rerun
    costs nothing."""
    import recon.match as match
    from recon.config import stage_defaults
    from tests.conftest import shared_path

    monkeypatch.setenv("RECON_WEIGHTS", str(shared_path("weights")))
    root = shared_path("data", "middlebury_temple", "templeSparseRing")
    calls: list[int] = []
    real = match._predict

    def counting(model, image, scale, turns, size, device):
        calls.append(turns)
        return real(model, image, scale, turns, size, device)

    monkeypatch.setattr(match, "_predict", counting)
    conf = {**stage_defaults("features", "aliked"), "name": "aliked", "resize_max": 320, "rotations": 2,
            "max_num_keypoints": 512}
    path = tmp_path / "features.h5"
    upright = ["templeSR0003.png", "templeSR0004.png"]
    assert match.extract_features(root, upright, conf, path, torch.device("cpu")) == 2
    assert sorted(calls) == [0, 0, 0, 0, 2, 2]  # candidates 0 and 180 of each, then each upright
    before = {n: h5.read_features(path, n)["keypoints"] for n in upright}
    calls.clear()
    assert match.extract_features(root, [*upright, "templeSR0014.png"], conf, path, torch.device("cpu")) == 1
    assert sorted(calls) == [0, 2, 2]  # its two candidates, then its extraction turned
    with h5py.File(path, "r") as file:
        assert [int(file[n].attrs["rotation"]) for n in [*upright, "templeSR0014.png"]] == [0, 0, 2]
    for name in upright:
        np.testing.assert_array_equal(h5.read_features(path, name)["keypoints"], before[name])
    calls.clear()
    assert match.extract_features(root, [*upright, "templeSR0014.png"], conf, path, torch.device("cpu")) == 0
    assert calls == []
