"""OmniGlue's extractor (sp_v6 SuperPoint + DINOv2 at the keypoints) and the whole chain on a real
pair: recon's feature and matching stages write hloc h5 files. Random weights (seeded): the
official ones are TF SavedModels converted offline (``matchers/omniglue/convert.py``)."""
from __future__ import annotations

import math
import shutil

import numpy as np
import torch

from matchers.omniglue.extractor import dino_input_size, nearest_multiple_of_8, sample_dino
from matchers.superpoint_v6 import sample_descriptors_tf
from recon.io import h5
from recon.match import extract_features, match_pairs
from conftest import shared_path

PAIR = ("02928139_3448003521.jpg", "03903474_1471484089.jpg")  # Sacre Coeur, 780x1063 and 1080x695


def omniglue_lookup(keypoint: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """OmniGlue's ``lookup_descriptor_bilinear`` written out: the floor cell, plus the next one
    when the coordinate is fractional and below the last index, each weighted by 1 - distance."""
    height, width = grid.shape[:2]
    xs = [math.floor(keypoint[0])] + ([math.floor(keypoint[0]) + 1]
                                      if keypoint[0] % 1 and keypoint[0] < width - 1 else [])
    ys = [math.floor(keypoint[1])] + ([math.floor(keypoint[1]) + 1]
                                      if keypoint[1] % 1 and keypoint[1] < height - 1 else [])
    return sum((1 - abs(keypoint[0] - x)) * (1 - abs(keypoint[1] - y)) * grid[y, x] for x in xs for y in ys)


def test_dino_sampling_is_omniglues_bilinear_lookup():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 5, 4, 6, generator=generator, dtype=torch.float64)  # (C, h, w) = (5, 4, 6)
    height, width = 60, 90  # image pixels; cells = xy / (90, 60) * (6, 4)
    keypoints = torch.tensor([[[0.0, 0.0], [44.3, 21.7], [89.0, 59.0], [80.0, 50.0], [15.0, 30.0]]],
                             dtype=torch.float64)
    ours = sample_dino(features, keypoints, (height, width))[0].numpy()
    grid = features[0].permute(1, 2, 0).numpy()
    cells = keypoints[0].numpy() / [width, height] * [6, 4]
    expected = np.stack([omniglue_lookup(c, grid) for c in cells])
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)


def test_superpoint_descriptors_are_the_tf_graphs_upsampled_map():
    """TF1 ``resize_bilinear`` (x8, legacy coordinates: output x reads input x / 8, clamped) then
    L2 normalisation, read at integer keypoints."""
    generator = torch.Generator().manual_seed(1)
    coarse = torch.randn(1, 3, 2, 3, generator=generator, dtype=torch.float64)  # image 16 x 24
    keypoints = torch.tensor([[[0.0, 0.0], [5.0, 3.0], [23.0, 15.0], [17.0, 9.0], [12.0, 4.0]]],
                             dtype=torch.float64)
    ours = sample_descriptors_tf(keypoints, coarse)[0].numpy()
    grid = coarse[0].permute(1, 2, 0).numpy()
    expected = []
    for x, y in keypoints[0].numpy():
        sx, sy = x / 8, y / 8
        x0, y0 = int(sx), int(sy)
        x1, y1 = min(x0 + 1, 2), min(y0 + 1, 1)
        ax, ay = sx - x0, sy - y0
        value = ((1 - ay) * ((1 - ax) * grid[y0, x0] + ax * grid[y0, x1])
                 + ay * ((1 - ax) * grid[y1, x0] + ax * grid[y1, x1]))
        expected.append(value / np.linalg.norm(value))
    np.testing.assert_allclose(ours, np.stack(expected), rtol=1e-12, atol=1e-12)


def test_resize_rules_of_omniglue():
    assert [nearest_multiple_of_8(s) for s in (1063, 780, 1059, 695, 1080)] == [1064, 784, 1056, 696, 1080]
    assert dino_input_size(1063, 780) == (630, 462)  # 630 x int(630 * 780 / 1063) = 462 = 33 * 14
    assert dino_input_size(695, 1080) == (392, 630)  # int(630 * 695 / 1080) = 405 -> 28 * 14
    assert dino_input_size(300, 200) == (294, 196)  # below 630: only floored to multiples of 14


def test_omniglue_pipeline_on_a_real_pair_writes_hloc_files(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in PAIR:
        shutil.copy(shared_path("data", "hloc_sacre_coeur", "mapping", name), images / name)
    torch.manual_seed(0)
    device = torch.device("cpu")
    features, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    extractor_conf = {"name": "omniglue_superpoint", "weights": None, "resize_max": 240,
                      "max_num_keypoints": 256, "dino_max_side": 112}
    assert extract_features(images, list(PAIR), extractor_conf, features, device) == 2
    matcher_conf = {"name": "omniglue", "weights": None, "batch_size": 0}
    assert match_pairs([PAIR], features, matcher_conf, matches, device) == 1

    stored = [h5.read_features(features, name) for name in PAIR]
    for feats, size in zip(stored, ((780, 1063), (1080, 695))):
        n = feats["keypoints"].shape[0]
        assert 0 < n <= 256
        assert feats["descriptors"].shape == (1024, n)  # 256 SuperPoint + 768 DINOv2 channels
        np.testing.assert_allclose(np.linalg.norm(feats["descriptors"][:256], axis=0), 1.0, rtol=1e-5)
        assert np.all(feats["keypoints"] >= -0.5) and np.all(feats["keypoints"] <= np.array(size) - 0.5)
    matches0, scores0 = h5.read_matches(matches, *PAIR)
    assert len(matches0) > 0  # random weights still give mutual maxima above 1e-3
    assert np.all(matches0[:, 0] < stored[0]["keypoints"].shape[0])
    assert np.all(matches0[:, 1] < stored[1]["keypoints"].shape[0])
    assert len(np.unique(matches0[:, 1])) == len(matches0)  # one-to-one
    assert np.all(scores0 > 1e-3)


def test_hloc_confs_name_the_omniglue_models():
    from recon.hloc import extract_features as hloc_extract, match_features as hloc_match
    extract = hloc_extract.stage_conf(hloc_extract.confs["omniglue"])
    assert extract == {"name": "omniglue_superpoint", "max_num_keypoints": 1024, "resize_max": 0, "weights": "official"}
    match = hloc_match.stage_conf(hloc_match.confs["omniglue"])
    assert match == {"name": "omniglue", "weights": "official", "batch_size": 0}
