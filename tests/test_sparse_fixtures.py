"""recon's ALIKED + LightGlue reproduces the official cvg/LightGlue outputs on real image pairs.

Reference: ``shared/fixtures/lightglue_aliked/{temple,sacre_coeur}.pt`` (official code, real
weights, CPU float32; see its README). We replay the official pipeline with recon's pieces: the
image read as cvg/LightGlue's ``load_image`` does (OpenCV, BGR -> RGB, /255), the longest side
resized to 1024 when the fixture says so (``matchers.keypoints.resize_longest_side``), ALIKED
with ``max_num_keypoints=2048``, keypoints mapped back to the original image with the hloc
convention, then ``aliked_lightglue`` on the original image sizes.

Tolerances are the fixture README's: keypoints 1e-3 px (compared as sets: when more than 2048
peaks pass the threshold the official order is by score, and near-ties may swap rows), scores and
descriptors 1e-4; at least 99 % of the official matches, compared as pairs of keypoints.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import matchers
from matchers.keypoints import keypoints_to_original, resize_longest_side
from conftest import shared_path

PAIRS = ("temple", "sacre_coeur")
KEYPOINT_ATOL = 1e-3
DESCRIPTOR_ATOL = 1e-4
SCORE_ATOL = 1e-4
MIN_MATCH_RECALL = 0.99


def load_image(path) -> torch.Tensor:
    """cvg/LightGlue's ``load_image``: (1, 3, H, W) RGB float in [0, 1], no normalisation."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).float()[None] / 255.0


def match_to_reference(keypoints: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest reference keypoint for each of ours, and its distance in pixels."""
    distances = torch.cdist(keypoints, reference, compute_mode="donot_use_mm_for_euclid_dist")
    return distances.min(dim=1).indices, distances.min(dim=1).values


@pytest.fixture(scope="module")
def weights_dir():
    path = shared_path("weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECON_WEIGHTS", str(path))
        yield path


@pytest.fixture(scope="module")
def runs(weights_dir) -> dict[str, dict]:
    """recon's features for both images of each fixture pair (extracted once for all tests)."""
    extractor = matchers.load("aliked", weights="official", max_num_keypoints=2048)
    results = {}
    for pair in PAIRS:
        reference = torch.load(shared_path("fixtures", "lightglue_aliked", f"{pair}.pt"), weights_only=True)
        features = []
        for i in (0, 1):
            image = load_image(shared_path(reference[f"image{i}"]["path"]))
            original_size = torch.tensor(image.shape[-2:][::-1], dtype=torch.float32)
            image, scale = resize_longest_side(image, reference["resize"] or 0)
            with torch.no_grad():
                out = extractor({"image": image})
            features.append({
                "keypoints": keypoints_to_original(out["keypoints"][0], scale),
                "descriptors": out["descriptors"][0],
                "scores": out["scores"][0],
                "image_size": original_size,
                "input_shape": tuple(image.shape),
            })
        results[pair] = {"reference": reference, "features": features}
    return results


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("index", (0, 1))
def test_aliked_reproduces_official_features(runs, pair, index):
    run = runs[pair]
    ours, ref = run["features"][index], run["reference"][f"image{index}"]
    assert ours["input_shape"] == tuple(ref["preprocessed_shape"])
    assert torch.equal(ours["image_size"], ref["image_size"])
    assert len(ours["keypoints"]) == len(ref["keypoints"])
    nearest, distance = match_to_reference(ours["keypoints"], ref["keypoints"])
    assert distance.max() <= KEYPOINT_ATOL
    assert len(torch.unique(nearest)) == len(nearest), "two keypoints claim the same official keypoint"
    torch.testing.assert_close(ours["descriptors"], ref["descriptors"][nearest], rtol=0, atol=DESCRIPTOR_ATOL)
    torch.testing.assert_close(ours["scores"], ref["keypoint_scores"][nearest], rtol=0, atol=SCORE_ATOL)


@pytest.mark.parametrize("pair", PAIRS)
def test_aliked_lightglue_reproduces_official_matches(runs, pair, weights_dir):
    """End to end: recon's features through recon's LightGlue give the official match set."""
    run = runs[pair]
    f0, f1 = run["features"]
    ref = run["reference"]
    matcher = matchers.load("aliked_lightglue", weights="official")
    data = {f"{key}{i}": f[key][None] for i, f in enumerate((f0, f1)) for key in ("keypoints", "descriptors", "image_size")}
    with torch.no_grad():
        out = matcher(data)
    # Express our matches in the official keypoint indices, then compare as sets of index pairs.
    to_ref0 = match_to_reference(f0["keypoints"], ref["image0"]["keypoints"])[0]
    to_ref1 = match_to_reference(f1["keypoints"], ref["image1"]["keypoints"])[0]
    m0 = out["matches0"][0]
    valid = m0 > -1
    ours = set(zip(to_ref0[valid].tolist(), to_ref1[m0[valid]].tolist()))
    official = set(map(tuple, ref["default"]["matches"].tolist()))
    recall = len(ours & official) / len(official)
    precision = len(ours & official) / len(ours)
    assert recall >= MIN_MATCH_RECALL, f"{pair}: {recall:.3%} of {len(official)} official matches reproduced"
    assert precision >= MIN_MATCH_RECALL, f"{pair}: {1 - precision:.3%} of our {len(ours)} matches are not official"
    assert out["stop"] == ref["default"]["stop"]
