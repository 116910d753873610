"""Focal prior precedence (EXIF > depth source > COLMAP default) and the depth sources."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import matchers
from recon.priors.depth import ArrayDepthSource, DepthProSource, DepthSource, sample_depth
from recon.priors.focal import focal_prior


def test_exif_focal_wins_over_a_depth_source():
    source = ArrayDepthSource({}, focals={"a.jpg": 900.0}, name="depth_pro")
    assert focal_prior("a.jpg", 1234.5, source, 1600, 1200) == (1234.5, "exif")


def test_depth_source_focal_is_used_without_exif():
    source = ArrayDepthSource({}, focals={"a.jpg": 900.0}, name="depth_pro")
    assert focal_prior("a.jpg", None, source, 1600, 1200) == (900.0, "depth_pro")


@pytest.mark.parametrize("exif", [None, 0.0, -5.0, math.nan])
@pytest.mark.parametrize("estimate", [None, math.nan, math.inf, 0.0])
def test_colmap_default_when_nothing_usable(exif, estimate):
    """Unusable values (missing, zero, negative, non-finite) fall through to 1.2 * max(w, h)."""
    source = ArrayDepthSource({}, focals={} if estimate is None else {"a.jpg": estimate})
    assert focal_prior("a.jpg", exif, source, 1600, 1200) == (pytest.approx(1920.0), "default")
    assert focal_prior("a.jpg", exif, None, 640, 960) == (pytest.approx(1152.0), "default")


def test_array_source_reports_missing_images_by_name():
    source = ArrayDepthSource({"a.jpg": np.ones((2, 3))}, name="mast3r")
    assert isinstance(source, DepthSource)
    assert source.depth("a.jpg").dtype == np.float32
    with pytest.raises(KeyError, match="mast3r.*b.jpg"):
        source.depth("b.jpg")


def test_sample_depth_takes_the_pixel_containing_the_point():
    """COLMAP coordinates: pixel (col, row) spans [col, col + 1) x [row, row + 1)."""
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    depth[2, 3] = 0  # unknown
    xy = np.array([[0.5, 0.5], [3.99, 0.0], [1.2, 2.7], [3.5, 2.5], [-0.1, 1.0], [4.0, 1.0], [2.0, np.nan]])
    values = sample_depth(depth, np.nan_to_num(xy, nan=-1))
    assert values[:3].tolist() == [1.0, 4.0, 10.0]
    assert np.isnan(values[3:]).all()


def test_depth_pro_source_runs_the_network_once_per_image():
    """A reduced Depth Pro (ViT width 32, 2 blocks) whose heads output constants: canonical inverse
    depth c and FOV 60 deg, so depth = f / (c * W) with f = W / 2 / tan(30 deg), or the hint.
    The source runs the network once per image and answers depth and focal from that run."""
    torch.manual_seed(0)
    model = matchers.load("depth_pro", embed_dim=32, depth=2, num_heads=2,
                          hook_block_ids=[0, 1], dims_encoder=[16, 24, 32, 32], decoder_features=16,
                          last_dims=[8, 1])
    canonical, fov_deg, width = 0.25, 60.0, 40
    with torch.no_grad():
        for layer, value in ((model.head[4], canonical), (model.fov.head[-1], fov_deg)):
            layer.weight.zero_()
            layer.bias.fill_(value)
    rgb = np.random.default_rng(0).integers(0, 256, (30, width, 3), dtype=np.uint8)
    loads = []

    def load(name: str) -> np.ndarray:
        loads.append(name)
        return rgb

    source = DepthProSource(model, load, focal_hint=lambda name: 55.0 if name == "hinted.png" else None)
    focal = 0.5 * width / math.tan(math.radians(fov_deg / 2))
    depth = source.depth("a.png")
    assert depth.shape == (30, width) and depth.dtype == np.float32
    assert np.allclose(depth, focal / (canonical * width), rtol=1e-5)
    assert source.focal_px("a.png") == pytest.approx(focal, rel=1e-5)
    assert focal_prior("a.png", None, source, width, 30) == (source.focal_px("a.png"), "depth_pro")
    assert loads == ["a.png"]
    assert source.focal_px("hinted.png") == 55.0
    assert np.allclose(source.depth("hinted.png"), 55.0 / (canonical * width), rtol=1e-5)
    assert loads == ["a.png", "hinted.png"]
