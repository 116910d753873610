"""Fast reciprocal nearest neighbours against the official ``fast_nn.pt`` fixture (naver/mast3r fed
the tiny model's stored descriptors, so every integer result must match exactly), plus a synthetic
scene with a known shift."""
from __future__ import annotations

import pytest
import torch

from matchers.mast3r.fast_nn import (correspondences_nonsym, correspondences_symmetric, fast_reciprocal_nns,
                                     grid_seeds, index_to_xy, reciprocal_nearest_neighbours)
from conftest import shared_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fixture() -> dict:
    io = torch.load(shared_path("fixtures", "mast3r", "tiny_io.pt"), weights_only=True)
    nn = torch.load(shared_path("fixtures", "mast3r", "fast_nn.pt"), weights_only=True)["results"]
    d = {"d11": io["pred1"]["desc"][0], "d21": io["pred2"]["desc"][0],
         "d22": io["sym"]["res22"]["desc"][0], "d12": io["sym"]["res12"]["desc"][0],
         "q11": io["pred1"]["desc_conf"][0], "q21": io["pred2"]["desc_conf"][0],
         "q22": io["sym"]["res22"]["desc_conf"][0], "q12": io["sym"]["res12"]["desc_conf"][0]}
    return {"inputs": d, "results": nn}


def test_grid_seeded_matches_equal_official(fixture):
    d, r = fixture["inputs"], fixture["results"]
    idx1, idx2 = fast_reciprocal_nns(d["d11"], d["d21"], 8, dist="dot")
    assert torch.equal(idx1, r["B_grid8_dot_idx"]["idx1"].long())
    assert torch.equal(idx2, r["B_grid8_dot_idx"]["idx2"].long())
    assert torch.equal(index_to_xy(idx1, 128), r["A_grid8_dot_xy"]["xy1"])
    assert torch.equal(index_to_xy(idx2, 128), r["A_grid8_dot_xy"]["xy2"])
    l2 = fast_reciprocal_nns(d["d11"], d["d21"], 8, dist="l2")  # official KD-tree (L2) path
    assert torch.equal(index_to_xy(l2[0], 128), r["D_grid8_kdtree_xy"]["xy1"])
    assert torch.equal(index_to_xy(l2[1], 128), r["D_grid8_kdtree_xy"]["xy2"])


def test_explicit_seeds_with_pixel_tolerance_equal_official(fixture):
    d, r = fixture["inputs"], fixture["results"]["E_seeds_pixtol5_idx"]
    x, y = grid_seeds(96, 128, 8)
    assert torch.equal(x, r["seed_x"]) and torch.equal(y, r["seed_y"])
    idx1, idx2 = fast_reciprocal_nns(d["d11"], d["d21"], (x, y), pixel_tol=5)
    assert torch.equal(idx1, r["idx1"].long()) and torch.equal(idx2, r["idx2"].long())


def test_blocked_brute_force_equals_official(fixture):
    d, r = fixture["inputs"], fixture["results"]["H_bruteforce_dot_allpixels"]
    a, b = d["d11"].reshape(-1, 24), d["d21"].reshape(-1, 24)
    for block in (2 ** 13, 5000):  # several blocks on both axes, ragged last block
        nn_a, nn_b = reciprocal_nearest_neighbours(a, b, block_size=block)
        assert torch.equal(nn_a, r["nn_A"]) and torch.equal(nn_b, r["nn_B"])
    assert int((nn_b[nn_a] == torch.arange(len(a))).sum()) == 708


def test_correspondence_extractors_equal_official(fixture):
    d, r = fixture["inputs"], fixture["results"]
    xy1, xy2, conf = correspondences_symmetric((d["d11"], d["d21"], d["d22"], d["d12"]),
                                               (d["q11"], d["q21"], d["q22"], d["q12"]), subsample=8)
    ref = r["F_sparse_ga_extract_correspondences"]
    assert torch.equal(xy1, ref["xy1"]) and torch.equal(xy2, ref["xy2"])
    torch.testing.assert_close(conf, ref["conf"], rtol=0, atol=1e-6)
    for tol in (0, 5):
        xy1, xy2, conf = correspondences_nonsym(d["d11"], d["d21"], d["q11"], d["q21"], 8, pixel_tol=tol)
        ref = r[f"G_nonsym_pixtol{tol}"]
        assert torch.equal(xy1, ref["xy1"]) and torch.equal(xy2, ref["xy2"])
        torch.testing.assert_close(conf, ref["conf"], rtol=0, atol=1e-6)


def test_synthetic_shift_recovered(fixture):
    """B is A shifted by (dy, dx) = (3, 5) plus noise: every grid seed matches, the shift is exact
    away from the wrap-around border."""
    r = fixture["results"]["S_shift_synthetic"]
    idx1, idx2 = fast_reciprocal_nns(r["A"], r["B"], 8)
    xy1, xy2 = index_to_xy(idx1, 48), index_to_xy(idx2, 48)
    assert torch.equal(xy1, r["xy1"]) and torch.equal(xy2, r["xy2"])
    inside = xy1[:, 0] + 5 < 48
    assert int(inside.sum()) == 25
    assert torch.equal(xy2[inside] - xy1[inside], torch.tensor([5, 3]).expand(25, 2))


def test_own_synthetic_scene_on_every_device():
    """Seeded random descriptors, shifted copy: all seeds converge to the true shift, any block size."""
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(32, 40, 16, generator=g), dim=-1)
    b = torch.roll(a, shifts=(2, -3), dims=(0, 1))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for block in (64, 2 ** 13):
            idx1, idx2 = fast_reciprocal_nns(a.to(device), b.to(device), 8, block_size=block)
            xy1, xy2 = index_to_xy(idx1, 40).cpu(), index_to_xy(idx2, 40).cpu()
            assert len(xy1) == 4 * 5
            expected = torch.stack(((xy1[:, 0] - 3) % 40, (xy1[:, 1] + 2) % 32), dim=-1)
            assert torch.equal(xy2, expected)
