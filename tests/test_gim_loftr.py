"""GIM_LoFTR: the official key layout, strict loading of GIM's checkpoint layout, LoFTR's
mathematical pieces against their definitions, a forward pass on real photographs, and the
pipeline run with the preset."""
from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kornia.geometry.subpix import dsnt
from torch import nn

import matchers
from matchers.base import ConfigError
from matchers.gim import GIMLoFTR, gim_loftr_state_dict
from matchers.loftr.ops import (border_mask, crop_windows, dual_softmax, fine_expectation, linear_attention,
                                mutual_nearest_matches, sine_position_encoding)
from matchers.weights import WeightsNotFoundError
from recon.cli import main
from recon.config import load_config
from recon.io import h5
from recon.io.images import read_image, resize_max
from tests.conftest import shared_path
from tests.test_roma import assert_matches_manifest, manifest

SACRE_COEUR = ("02928139_3448003521.jpg", "03903474_1471484089.jpg", "10265353_3838484249.jpg")


# ---- layout and loading ----------------------------------------------------------------------------
def test_gim_loftr_state_dict_equals_official_manifest() -> None:
    with torch.device("meta"):
        model = GIMLoFTR()
    state = model.state_dict()
    expected = manifest("gim_loftr")
    assert_matches_manifest(state, expected)
    assert list(state) == list(expected)  # the same order, too
    assert sum(p.numel() for p in model.parameters()) == 16_180_312  # the manifest's num_parameters


def test_checkpoint_in_gims_layout_loads_strictly(tmp_path) -> None:
    torch.manual_seed(3)
    source = GIMLoFTR()
    path = tmp_path / "gim_loftr_50h.ckpt"  # Lightning's container: keys under "state_dict", no prefix
    torch.save({"epoch": 7, "global_step": 100, "state_dict": source.state_dict()}, path)
    loaded = matchers.load("gim_loftr", weights=path)
    assert isinstance(loaded, GIMLoFTR) and not loaded.training
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    partial = dict(list(source.state_dict().items())[:3])  # strict: missing keys are an error
    torch.save({"state_dict": partial}, path)
    with pytest.raises(RuntimeError, match="Missing key.*loftr_fine.layers.1.norm2.bias"):
        matchers.load("gim_loftr", weights=path)


def test_checkpoint_keys_are_not_renamed() -> None:
    keys = list(manifest("gim_loftr"))
    assert list(gim_loftr_state_dict({"epoch": 1, "state_dict": {k: torch.zeros(1) for k in keys}})) == keys


def test_missing_checkpoint_names_the_file_and_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RECON_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match=re.escape(str(tmp_path / "weights" / "gim_loftr_50h.ckpt"))):
        matchers.load("gim_loftr", weights="official")


# ---- the mathematical pieces -------------------------------------------------------------------------
def test_linear_attention_equals_the_explicit_kernel_average() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 4, generator=g, dtype=torch.float64) for n in (5, 7, 7))
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    expected = torch.empty(2, 5, 3, 4, dtype=torch.float64)
    for b in range(2):
        for h in range(3):
            weights = phi_q[b, :, h] @ phi_k[b, :, h].T  # (L, S) kernel values
            expected[b, :, h] = weights @ v[b, :, h] / (weights.sum(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(linear_attention(q, k, v), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("temp_bug_fix", [False, True])
def test_position_encoding_closed_form(temp_bug_fix: bool) -> None:
    channels, height, width = 16, 3, 5
    encoding = sine_position_encoding(channels, height, width, temp_bug_fix)
    assert encoding.shape == (1, channels, height, width)
    # GIM's model: rate (-ln 1e4 / C) // 2 = -1, so w_g = exp(-2g); fixed: w_g = 1e4^(-2g / (C/2)).
    for c in range(channels):
        g, kind = divmod(c, 4)
        w = 10000.0 ** (-2 * g / (channels // 2)) if temp_bug_fix else math.exp(-2 * g)
        for y in range(height):
            for x in range(width):
                position = (x + 1) if kind < 2 else (y + 1)
                value = math.sin(position * w) if kind % 2 == 0 else math.cos(position * w)
                assert encoding[0, c, y, x].item() == pytest.approx(value, abs=1e-6)


def test_dual_softmax_is_the_product_of_row_and_column_softmaxes() -> None:
    g = torch.Generator().manual_seed(1)
    f0, f1 = torch.randn(1, 4, 8, generator=g, dtype=torch.float64), torch.randn(1, 6, 8, generator=g, dtype=torch.float64)
    s = (f0[0] @ f1[0].T) / 8 / 0.1  # <f0, f1> / (C * temperature)
    expected = torch.exp(s) / torch.exp(s).sum(0, keepdim=True) * torch.exp(s) / torch.exp(s).sum(1, keepdim=True)
    torch.testing.assert_close(dual_softmax(f0, f1, 0.1)[0], expected)


def test_mutual_nearest_matches_on_a_crafted_confidence_matrix() -> None:
    conf = torch.tensor([[[0.90, 0.05, 0.00, 0.00, 0.00],    # row 0 <-> col 0: mutual, kept
                          [0.10, 0.00, 0.70, 0.00, 0.00],    # row 1 -> col 2, but col 2 prefers row 2
                          [0.00, 0.00, 0.80, 0.00, 0.00],    # row 2 <-> col 2: mutual, kept
                          [0.00, 0.00, 0.00, 0.15, 0.00],    # row 3 <-> col 3: mutual, below 0.2
                          [0.00, 0.00, 0.00, 0.00, 0.60]]])  # row 4 <-> col 4: mutual, col 4 invalid
    valid1 = torch.tensor([True, True, True, True, False])
    b, i, j, score = mutual_nearest_matches(conf, 0.2, torch.ones(5, dtype=torch.bool), valid1)
    assert b.tolist() == [0, 0] and i.tolist() == [0, 2] and j.tolist() == [0, 2]
    torch.testing.assert_close(score, torch.tensor([0.90, 0.80]))
    b, i, j, _ = mutual_nearest_matches(conf, 0.1)  # no masks, lower threshold: rows 3 and 4 too
    assert i.tolist() == [0, 2, 3, 4] and j.tolist() == [0, 2, 3, 4]


def test_border_mask_removes_cells_near_each_edge() -> None:
    mask = border_mask(5, 6, 2).reshape(5, 6)
    assert mask.nonzero().tolist() == [[2, 2], [2, 3]]  # rows 2..2, columns 2..3 remain
    assert border_mask(4, 4, 0).all()


def test_crop_windows_equals_unfold_at_the_selected_cells() -> None:
    g = torch.Generator().manual_seed(2)
    coarse_h, coarse_w, stride, window = 3, 4, 4, 5
    features = torch.randn(2, 6, coarse_h * stride, coarse_w * stride, generator=g)
    unfolded = F.unfold(features, window, padding=window // 2, stride=stride)  # (B, C*W*W, h*w)
    unfolded = unfolded.reshape(2, 6, window * window, coarse_h * coarse_w).permute(0, 3, 2, 1)
    b_ids, cells = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 5, 11, 7])  # corners (zero padding) and inside
    torch.testing.assert_close(crop_windows(features, b_ids, cells, coarse_w, stride, window), unfolded[b_ids, cells],
                               rtol=0, atol=0)


def test_fine_expectation_finds_the_peak_and_averages_ties() -> None:
    window, channels = 5, 4
    centre = torch.tensor([30.0, 0.0, 0.0, 0.0])  # a strong feature: softmax(<c, f> / 2) is one-hot on its copy
    window0 = torch.zeros(2, window * window, channels)
    window0[:, window * window // 2] = centre
    window1 = torch.zeros(2, window * window, channels)
    window1[0, 3 * window + 4] = centre  # row 3, column 4 -> (x, y) = (1.0, 0.5)
    window1[1, 0], window1[1, 2 * window + 2] = centre, centre  # (-1, -1) and (0, 0) equally: midpoint
    torch.testing.assert_close(fine_expectation(window0, window1), torch.tensor([[1.0, 0.5], [-0.5, -0.5]]),
                               atol=1e-5, rtol=0)


def test_fine_expectation_matches_kornias_spatial_expectation() -> None:
    g = torch.Generator().manual_seed(4)
    window0, window1 = torch.randn(6, 25, 8, generator=g), torch.randn(6, 25, 8, generator=g)
    heatmap = torch.softmax(torch.einsum("mc,mrc->mr", window0[:, 12], window1) / math.sqrt(8), dim=1)
    expected = dsnt.spatial_expectation2d(heatmap.view(1, 6, 5, 5), True)[0]  # what LoFTR's fine matching calls
    torch.testing.assert_close(fine_expectation(window0, window1), expected)


# ---- the network on real photographs ----------------------------------------------------------------------
def photo(name: str, max_size: int) -> torch.Tensor:
    image, _ = resize_max(read_image(shared_path("data", "hloc_sacre_coeur", "mapping", name)), max_size)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


def calibrated_random_model(images: list[torch.Tensor], **conf) -> GIMLoFTR:
    """Random weights (seeded) with BatchNorm statistics measured on ``images``.

    A trained model's statistics keep features near unit scale; the default running statistics
    (0, 1) let a random ResNet's features grow to ~15, and the dual softmax then collapses onto
    one column. Measuring them is what training does first - no weight is set by hand.
    """
    torch.manual_seed(0)
    model = matchers.load("gim_loftr", **conf)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration images
    model.backbone.train()
    with torch.no_grad():
        for image in images:
            model.backbone(model.resize(image)[0])
    return model.eval()


SHIFT = 16  # pixels: two coarse cells


@pytest.fixture(scope="module")
def shifted_crops() -> list[torch.Tensor]:
    """Two crops of one photograph (77 x 120 px) SHIFT px apart: a real pair with a known answer,
    x1 = x0 - SHIFT. Heights of 77 px are resized to 72 (the multiple-of-8 path)."""
    image = photo(SACRE_COEUR[1], 120)
    return [image[..., :-SHIFT], image[..., SHIFT:]]


def test_shifted_crops_match_by_the_shift_inside_both_images(shifted_crops) -> None:
    """GIM's recipe end to end (resize to multiples of 8, backbone, both transformers, dual
    softmax, fine windows and expectation, mapping back to input pixels) on real image content;
    random weights, so the check is geometric: matches are the translation, within a pixel."""
    model = calibrated_random_model(shifted_crops)
    out = model({"image0": shifted_crops[0], "image1": shifted_crops[1]})
    count = len(out["scores"])
    assert count >= 10 and out["keypoints0"].shape == out["keypoints1"].shape == (count, 2)
    assert out["scores"].min() > 0.2 and out["scores"].max() <= 1.0
    error = (out["keypoints1"] - out["keypoints0"] + torch.tensor([SHIFT, 0.0])).norm(dim=1)
    assert error.max() < 1.0
    for key, image in zip(("keypoints0", "keypoints1"), shifted_crops):
        height, width = image.shape[-2:]
        assert (out[key] >= -0.5).all() and (out[key][:, 0] <= width - 0.5).all() and (out[key][:, 1] <= height - 0.5).all()
    # image 0's keypoints sit on the coarse grid: 8 px cells of its 72 x 104 network input
    grid = (out["keypoints0"] + 0.5) * torch.tensor([104 / 104, 72 / 77]) - 0.5
    torch.testing.assert_close(grid / 8, (grid / 8).round(), atol=1e-4, rtol=0)


def test_resize_to_multiples_of_eight_and_scale_back() -> None:
    model = GIMLoFTR.__new__(GIMLoFTR)  # resize() reads only the configuration
    model.conf = dict(GIMLoFTR.default_conf)
    resized, scale = model.resize(torch.rand(1, 3, 110, 150))
    assert resized.shape == (1, 3, 104, 144)
    torch.testing.assert_close(scale, torch.tensor([150 / 144, 110 / 104]))
    with pytest.raises(ValueError, match="smaller than 8"):
        model.resize(torch.rand(1, 3, 7, 100))


# ---- configuration and pipeline -----------------------------------------------------------------------------
def test_preset_and_keypoint_matching_refused() -> None:
    config = load_config("gim_loftr")
    assert config["features"]["name"] == "none" and config["matcher"]["name"] == "gim_loftr"
    assert config["matcher"]["match_threshold"] == 0.2 and config["matcher"]["size_divisor"] == 8
    with pytest.raises(ConfigError, match="at_keypoints.*no dense warp"):
        load_config("gim_loftr", ["features.name=sift", "matcher.at_keypoints=true"])
    with pytest.raises(ConfigError, match="fine_window_size"):
        matchers.load("gim_loftr", fine_window_size=4)


def test_pipeline_writes_hloc_files_with_the_preset(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in SACRE_COEUR:
        shutil.copy(shared_path("data", "hloc_sacre_coeur", "mapping", name), images / name)
    torch.manual_seed(1)
    checkpoint = tmp_path / "random_gim_loftr.ckpt"
    torch.save({"state_dict": GIMLoFTR().state_dict()}, checkpoint)
    out = tmp_path / "out"
    code = main(["match", str(images), str(out), "--config", "gim_loftr", "--set", f"matcher.weights={checkpoint}",
                 "--set", "matcher.resize_max=96", "--set", "matcher.match_threshold=0.0", "--device", "cpu"])
    assert code == 0
    assert sorted(h5.list_names(out / "features.h5")) == sorted(SACRE_COEUR)
    for name0, name1 in ((SACRE_COEUR[0], SACRE_COEUR[1]), (SACRE_COEUR[0], SACRE_COEUR[2]),
                         (SACRE_COEUR[1], SACRE_COEUR[2])):
        matches, _ = h5.read_matches(out / "matches.h5", name0, name1)
        assert matches.ndim == 2 and matches.shape[1] == 2
    keypoints = h5.read_keypoints(out / "features.h5", SACRE_COEUR[0])
    assert len(keypoints) > 0 and np.isfinite(keypoints).all()
