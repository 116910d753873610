"""Tiny RoMa v1: official key layout and the correlation soft-argmax it decodes coarse matches with."""
from __future__ import annotations

import torch

import matchers
from matchers.roma.tiny import TinyRoMa, xy_grid
from tests.test_roma import assert_matches_manifest, manifest


def test_tiny_roma_state_dict_equals_official_manifest() -> None:
    with torch.device("meta"):
        model = TinyRoMa()
    assert_matches_manifest(model.state_dict(), manifest("tiny_roma_v1_outdoor"))


def peaked_correlation(h1: int, w1: int, h0: int, w0: int, row: int, col: int) -> torch.Tensor:
    corr = torch.zeros(1, h1, w1, h0, w0)
    corr[0, row, col] = 50.0  # every A pixel matches B pixel (row, col)
    return corr


def test_soft_argmax_of_a_peaked_correlation_is_the_peak_position() -> None:
    h1, w1 = 8, 12
    row, col = 5, 6  # off the stride-4 lattice used by the approximate path, index 66
    grid = xy_grid(h1, w1, 1 / h1, 1 / w1, h1, w1, torch.device("cpu"))
    corr = peaked_correlation(h1, w1, 3, 4, row, col)
    for exact in (True, False):
        warp = TinyRoMa(exact_softmax=exact).soft_argmax(corr)
        assert warp.shape == (1, 2, 3, 4)
        torch.testing.assert_close(warp[0, :, 1, 2], grid[row * w1 + col], atol=1e-5, rtol=0)


def test_tiny_roma_sparse_matches_lie_in_both_images() -> None:
    model = matchers.load("tiny_roma_v1_outdoor", max_matches=400)
    g = torch.Generator().manual_seed(0)
    image0, image1 = torch.rand(1, 3, 128, 160, generator=g), torch.rand(1, 3, 96, 192, generator=g)
    out = model({"image0": image0, "image1": image1})
    assert out["keypoints0"].shape == out["keypoints1"].shape == (len(out["scores"]), 2)
    assert 0 < len(out["scores"]) <= 400
    for key, (h, w) in (("keypoints0", (128, 160)), ("keypoints1", (96, 192))):
        assert out[key][:, 0].min() >= -0.5 and out[key][:, 0].max() <= w - 0.5
        assert out[key][:, 1].min() >= -0.5 and out[key][:, 1].max() <= h - 0.5
    again = model({"image0": image0, "image1": image1})
    assert torch.equal(out["keypoints0"], again["keypoints0"])  # seeded sampling
