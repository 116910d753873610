"""MASt3R preprocessing, encoder caching and grid-anchored matching.

- Preprocessing reproduces the official ``load_images`` pixels (fixtures) and maps processed pixels
  back to the original image exactly (a ramp image whose pixel values are their own coordinates).
- The cache encodes every image once, and cached decoding equals the official per-pair forward.
- Anchor snapping is one-to-one and keeps the most confident match (a hand-built case).
- The hloc writer produces readable files whose keypoints repeat across pairs, and resumes.
"""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import matchers
from matchers.mast3r.matching import (EncoderCache, anchor_ids, anchor_pixels, load_image, match_images_to_hloc,
                                      match_pair, prepare_image, snap_to_anchors)
from recon.io.h5 import read_keypoints, read_matches
from conftest import shared_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEMPLE = ("data", "middlebury_temple", "templeSparseRing")


@pytest.fixture(scope="module")
def tiny_model():
    return matchers.load("mast3r", weights=shared_path("fixtures", "mast3r", "tiny_ckpt.pth"))


def test_preprocessing_reproduces_official_pixels():
    io = torch.load(shared_path("fixtures", "mast3r", "tiny_io.pt"), weights_only=True)
    for i, view in enumerate((io["view1"], io["view2"])):
        image = load_image(shared_path(*TEMPLE, f"templeSR000{i + 1}.png"), size=128)
        assert torch.equal(image.img, view["img"])  # bit-exact, LANCZOS 640x480 -> 128x96
        assert torch.equal(image.true_shape, view["true_shape"])
    e2e = torch.load(shared_path("fixtures", "mast3r", "retrieval_e2e.pt"), weights_only=True)
    image = load_image(shared_path(*TEMPLE, "templeSR0001.png"), size=512)
    u8 = ((image.img[0].permute(1, 2, 0) * 0.5 + 0.5) * 255).round().to(torch.uint8)
    assert torch.equal(u8, e2e["img0_uint8_512x384"])


@pytest.mark.parametrize("w0,h0", [(250, 200), (200, 250), (240, 240)])
def test_processed_pixels_map_back_to_original_pixels(w0, h0):
    """A ramp whose red/green values are the pixel's own x/y: after resize (bicubic reproduces
    linear functions) and centre crop, every interior processed pixel's value is the original
    coordinate to_original() returns, within uint8 rounding (0.5) plus resampling slack."""
    x, y = np.meshgrid(np.arange(w0), np.arange(h0))
    rgb = np.stack((x, y, np.zeros_like(x)), -1).astype(np.uint8)
    image = prepare_image(PIL.Image.fromarray(rgb), size=512)
    H, W = image.size
    assert H % 16 == 0 and W % 16 == 0 and max(image.resized_size) == 512
    assert (W >= H) == (w0 >= h0)  # portrait stays portrait
    values = (image.img[0, :2] * 0.5 + 0.5) * 255  # (2, H, W)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    xy = torch.stack((xx.reshape(-1), yy.reshape(-1)), -1)
    orig = image.to_original(xy)
    interior = ((orig[:, 0] > 2) & (orig[:, 0] < w0 - 3) & (orig[:, 1] > 2) & (orig[:, 1] < h0 - 3))
    err = (orig[interior] - values.reshape(2, -1).T[interior].double()).abs()
    assert err.max() < 0.6, f"max mapping error {err.max():.3f} px"


def test_snap_to_anchors_is_one_to_one_and_keeps_the_best():
    size = (32, 48)  # 4 x 6 blocks of 8 px
    xy0 = torch.tensor([[1, 1], [6, 6], [20, 9], [30, 30], [44, 2]])
    xy1 = torch.tensor([[9, 9], [14, 12], [9, 10], [0, 0], [47, 31]])
    conf = torch.tensor([1.0, 3.0, 2.0, 5.0, 4.0])
    m = snap_to_anchors(xy0, xy1, conf, size, size, 8)
    # blocks (6 per row): image 0 ids [0, 0, 8, 21, 5], image 1 ids [7, 7, 7, 0, 23]. Matches 0
    # and 1 share image-0 block 0: the better (conf 3) stays; it shares image-1 block 7 with
    # match 2 (conf 2), which goes.
    assert m.ids0.tolist() == [0, 5, 21] and m.ids1.tolist() == [7, 23, 0]
    assert m.scores.tolist() == [3.0, 4.0, 5.0]
    assert anchor_ids(anchor_pixels(size, 8), size, 8).tolist() == list(range(24))


@torch.no_grad()
def test_cached_encoder_runs_once_per_image_and_matches_the_per_pair_forward(tiny_model):
    images = {f"im{i}": load_image(shared_path(*TEMPLE, f"templeSR000{i + 1}.png"), size=64) for i in range(3)}
    cache = EncoderCache(tiny_model)
    pairs = [("im0", "im1"), ("im0", "im2"), ("im1", "im2")]
    results = {p: match_pair(tiny_model, cache(p[0], images[p[0]]), cache(p[1], images[p[1]]), symmetric=False)
               for p in pairs}
    assert cache.encoded == 3  # not 2 per pair
    a, b = images["im0"], images["im2"]
    pred0, pred1 = tiny_model({"img": a.img, "true_shape": a.true_shape}, {"img": b.img, "true_shape": b.true_shape})
    cached0, cached1 = tiny_model.decode_pair(cache("im0", a), cache("im2", b))
    for key in ("desc", "desc_conf", "conf"):
        torch.testing.assert_close(cached0[key], pred0[key], rtol=0, atol=1e-5)
        torch.testing.assert_close(cached1[key], pred1[key], rtol=0, atol=1e-5)
    for m in results.values():
        assert len(m.ids0) > 0 and len(set(m.ids0.tolist())) == len(m.ids0) == len(set(m.ids1.tolist()))


def test_hloc_files_have_repeating_keypoints_and_resume(tiny_model, tmp_path):
    image_dir = shared_path(*TEMPLE)
    names = [f"templeSR000{i}.png" for i in (1, 2, 3)]
    pairs = [(names[0], names[1]), (names[0], names[2]), (names[1], names[2])]
    features, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    cache = match_images_to_hloc(tiny_model, image_dir, pairs, features, matches, size=64)
    assert cache.encoded == 3
    kp = read_keypoints(features, names[0])
    assert kp.shape == (8 * 6, 2)  # 64x48 input, one anchor per 8x8 block
    assert np.allclose(kp[0], (4 + 0.5) * 10 - 0.5) and np.allclose(kp[1], [(12 + 0.5) * 10 - 0.5, (4 + 0.5) * 10 - 0.5])
    matched = {}
    for a, b in pairs:
        m, scores = read_matches(matches, a, b)  # (M, 2) keypoint index pairs
        assert len(m) > 0 and (scores > 0).all()
        assert len(np.unique(m[:, 0])) == len(np.unique(m[:, 1])) == len(m)  # one-to-one
        assert m[:, 1].max() < len(read_keypoints(features, b))
        matched[a, b] = set(m[:, 0].tolist())
    # some anchors of image 0 are matched in both of its pairs: tracks can form
    assert matched[names[0], names[1]] & matched[names[0], names[2]]
    again = match_images_to_hloc(tiny_model, image_dir, pairs, features, matches, size=64)
    assert again.encoded == 0  # every pair was already there
