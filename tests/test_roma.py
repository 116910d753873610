"""RoMa: official key layout, the official reduced-size fixture, and the mathematical pieces.

Fixtures (../shared/fixtures): ``manifests/roma_outdoor.json`` and
``manifests/roma_dinov2_vitl14_coarse.json`` (official key/shape lists), ``tiny/roma_tiny.pt``
(official RoMa classes at reduced width with seeded weights, and their outputs).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from matchers.roma import RoMa, roma_decoder
from matchers.roma.ops import (anchor_grid, cls_to_flow_refine, cosine_kernel, gp_posterior_mean, kde,
                               local_correlation, mutual_nearest_matches, normalized_to_pixels, pixels_to_normalized,
                               sample_matches, sample_warp)
from conftest import shared_path

ATOL = 1e-4  # the fixture README's tolerance for a re-implementation


def manifest(name: str) -> dict[str, dict]:
    return json.loads(shared_path("fixtures", "manifests", f"{name}.json").read_text())["state_dict"]


def assert_matches_manifest(state: dict[str, torch.Tensor], expected: dict[str, dict]) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = [(k, list(state[k].shape), v["shape"]) for k, v in expected.items()
             if list(state[k].shape) != v["shape"] or str(state[k].dtype).replace("torch.", "") != v["dtype"]]
    assert not wrong, f"shape/dtype differs: {wrong[:5]}"


def test_roma_state_dict_equals_official_manifest() -> None:
    with torch.device("meta"):
        model = RoMa()
    assert_matches_manifest(model.state_dict(), manifest("roma_outdoor"))


def test_roma_dinov2_equals_official_coarse_encoder_manifest() -> None:
    with torch.device("meta"):
        model = RoMa()
    assert_matches_manifest(model.encoder.dinov2.state_dict(), manifest("roma_dinov2_vitl14_coarse"))


# ---- the reduced-size official model -------------------------------------------------------------
class FixtureEncoder(nn.Module):
    """The fixture's stand-in encoder (documented in fixtures/tiny/README.md, not RoMa's):
    1x1 convs on average-pooled images at strides 1, 2, 4, 8 and a stride-14 "DINOv2" grid."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({s: nn.Conv2d(3, c, 1) for s, c in
                                    {"1": 6, "2": 8, "4": 12, "8": 16, "16": 24}.items()})

    def forward(self, x: torch.Tensor, upsample: bool = False) -> dict[int, torch.Tensor]:
        out = {1: self.convs["1"](x)}
        for s in (2, 4, 8):
            out[s] = self.convs[str(s)](F.avg_pool2d(x, s, s))
        if not upsample:
            out[16] = self.convs["16"](F.avg_pool2d(x, 14, 14))
        return out


@pytest.fixture(scope="module")
def tiny() -> tuple[RoMa, dict]:
    fixture = torch.load(shared_path("fixtures", "tiny", "roma_tiny.pt"), weights_only=True)
    config = fixture["config"]
    decoder = roma_decoder(
        gp_dim=config["gp_dim"], feat_dims={str(k): v for k, v in config["proj_out"].items()},
        decoder_depth=config["embedding_decoder_blocks"], decoder_heads=config["embedding_decoder_heads"],
        cls_res=config["cls_res"], refiners={"16": (8, 2), "8": (8, 1), "4": (4, 1), "2": (4, None), "1": (2, None)},
        encoder_dims={str(k): v for k, v in config["encoder_dims_per_scale"].items()},
        hidden_blocks=config["refiner_hidden_blocks"], kernel_size=config["refiner_kernel"])
    model = RoMa(encoder=FixtureEncoder(), decoder=decoder, coarse_res=tuple(config["coarse_hw"]),
                 upsample_res=tuple(config["upsample_res"]), symmetric=config["symmetric"],
                 attenuate_cert=config["attenuate_cert"])
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model.eval(), fixture


def test_tiny_roma_match_reproduces_official_warp_and_certainty(tiny) -> None:
    model, fixture = tiny
    inputs = fixture["inputs"]
    warp, certainty = model.match_tensors(inputs["im_A"], inputs["im_B"], inputs["im_A_high_res"],
                                          inputs["im_B_high_res"])
    assert warp.shape == fixture["outputs"]["warp"].shape
    torch.testing.assert_close(warp, fixture["outputs"]["warp"], atol=ATOL, rtol=0)
    torch.testing.assert_close(certainty, fixture["outputs"]["certainty"], atol=ATOL, rtol=0)


def test_tiny_roma_both_decoder_passes_match_official_per_scale(tiny) -> None:
    model, fixture = tiny
    inputs = fixture["inputs"]
    captured: dict[str, tuple] = {}
    hooks = [model.decoder.gps["16"].register_forward_hook(lambda m, i, o: captured.__setitem__("gp", o)),
             model.decoder.embedding_decoder.register_forward_hook(lambda m, i, o: captured.__setitem__("emb", o))]
    for s, refiner in model.decoder.conv_refiner.items():
        hooks.append(refiner.register_forward_hook(
            lambda m, i, o, s=s: None if f"ref{s}" in captured else captured.__setitem__(f"ref{s}", o)))
    with torch.inference_mode():
        call0, call1 = fixture["decoder_calls"]
        coarse = model.pass_once(inputs["im_A"], inputs["im_B"], upsample=False,
                                 scale_factor=call0["kwargs"]["scale_factor"])
        fine = model.pass_once(inputs["im_A_high_res"], inputs["im_B_high_res"], upsample=True,
                               scale_factor=call1["kwargs"]["scale_factor"], flow=call1["kwargs"]["flow"],
                               certainty=call1["kwargs"]["certainty"])
    for hook in hooks:
        hook.remove()
    for ours, official in ((coarse, call0["corresps"]), (fine, call1["corresps"])):
        assert sorted(ours) == sorted(official)
        for s in official:
            torch.testing.assert_close(ours[s]["flow"], official[s]["flow"], atol=ATOL, rtol=0)
            torch.testing.assert_close(ours[s]["certainty"], official[s]["certainty"], atol=ATOL, rtol=0)
    inter = fixture["coarse_pass_intermediates"]
    torch.testing.assert_close(captured["gp"], inter["gp16_posterior"][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(captured["emb"][0], inter["embedding_decoder_out"][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(captured["emb"][1], inter["embedding_decoder_out"][1], atol=ATOL, rtol=0)
    for s in ("16", "8", "4", "2", "1"):
        for ours, official in zip(captured[f"ref{s}"], inter[f"conv_refiner_{s}_out"]):
            torch.testing.assert_close(ours, official, atol=ATOL, rtol=0)


def test_cls_to_flow_refine_reproduces_official_unit(tiny) -> None:
    unit = tiny[1]["unit"]["cls_to_flow_refine"]
    torch.testing.assert_close(cls_to_flow_refine(unit["cls"]), unit["flow"], atol=1e-6, rtol=0)


def test_local_correlation_reproduces_official_unit(tiny) -> None:
    unit = tiny[1]["unit"]["local_correlation_r2"]
    corr = local_correlation(unit["feature0"], unit["feature1"], 2, unit["warp"])
    torch.testing.assert_close(corr, unit["corr"], atol=1e-5, rtol=0)


# ---- mathematical pieces -----------------------------------------------------------------------------
def test_gp_posterior_mean_equals_direct_solve() -> None:
    g = torch.Generator().manual_seed(0)
    x, y, f = torch.randn(2, 7, 5, generator=g), torch.randn(2, 9, 5, generator=g), torch.randn(2, 9, 3, generator=g)
    mean = gp_posterior_mean(x, y, f, temperature=0.2, sigma_noise=0.1)
    xd, yd, fd = x.double().numpy(), y.double().numpy(), f.double().numpy()
    for i in range(2):
        cos_yy = (yd[i] @ yd[i].T) / (np.linalg.norm(yd[i], axis=1)[:, None] * np.linalg.norm(yd[i], axis=1)[None] + 1e-6)
        cos_xy = (xd[i] @ yd[i].T) / (np.linalg.norm(xd[i], axis=1)[:, None] * np.linalg.norm(yd[i], axis=1)[None] + 1e-6)
        k_yy, k_xy = np.exp((cos_yy - 1) / 0.2), np.exp((cos_xy - 1) / 0.2)
        expected = k_xy @ np.linalg.solve(k_yy + 0.1 * np.eye(9), fd[i])
        np.testing.assert_allclose(mean[i].numpy(), expected, atol=1e-4)


def test_gp_posterior_interpolates_targets_of_identical_features() -> None:
    # Orthogonal support features: K_yy = I, so a query equal to support j gets f_j / (1 + noise).
    y = torch.eye(4)[None] * 3.0
    f = torch.arange(8.0).reshape(1, 4, 2)
    mean = gp_posterior_mean(y[:, [2, 0]], y, f, temperature=0.2, sigma_noise=0.1)
    k_off = math.exp(-1 / 0.2)  # kernel between orthogonal features
    assert cosine_kernel(y, y, 0.2)[0, 0, 1].item() == pytest.approx(k_off)
    torch.testing.assert_close(mean[0], f[0, [2, 0]] / 1.1, atol=2e-2, rtol=0)


def test_anchor_soft_argmax_recovers_peaked_and_mixed_anchors() -> None:
    res = 8
    anchors = anchor_grid(res)
    logits = torch.full((1, res * res, 1, 2), -30.0)
    logits[0, 19, 0, 0] = 10.0  # one sharp anchor -> its centre
    logits[0, 19, 0, 1] = 5.0  # two neighbouring anchors equally likely -> their midpoint
    logits[0, 20, 0, 1] = 5.0
    flow = cls_to_flow_refine(logits)[0, 0]
    torch.testing.assert_close(flow[0], anchors[19], atol=1e-6, rtol=0)
    torch.testing.assert_close(flow[1], (anchors[19] + anchors[20]) / 2, atol=1e-6, rtol=0)
    # Anchors are the row-major centres of a res x res grid, x first.
    assert anchors[1, 0] > anchors[0, 0] and anchors[res, 1] > anchors[0, 1]


def bilinear_zero_padded(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """Sample image (C, H, W) at normalised (x, y) (align_corners=False), zeros outside."""
    c, h, w = image.shape
    u, v = ((x + 1) * w - 1) / 2, ((y + 1) * h - 1) / 2
    u0, v0 = math.floor(u), math.floor(v)
    out = np.zeros(c)
    for dv in (0, 1):
        for du in (0, 1):
            weight = (1 - abs(u - (u0 + du))) * (1 - abs(v - (v0 + dv)))
            if 0 <= u0 + du < w and 0 <= v0 + dv < h:
                out += weight * image[:, v0 + dv, u0 + du]
    return out


def test_local_correlation_equals_naive_loop() -> None:
    g = torch.Generator().manual_seed(1)
    f0, f1 = torch.randn(1, 5, 4, 6, generator=g), torch.randn(1, 5, 4, 6, generator=g)
    warp = torch.rand(1, 2, 4, 6, generator=g) * 2.2 - 1.1
    radius = 1
    corr = local_correlation(f0, f1, radius, warp, max_elements=50)  # forces several chunks
    h, w = 4, 6
    for i in range(h):
        for j in range(w):
            k = 0
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    x = warp[0, 0, i, j].item() + dx * 2 / w
                    y = warp[0, 1, i, j].item() + dy * 2 / h
                    expected = f0[0, :, i, j].numpy() @ bilinear_zero_padded(f1[0].numpy(), x, y) / math.sqrt(5)
                    assert corr[0, k, i, j].item() == pytest.approx(expected, abs=1e-5)
                    k += 1


def test_kde_counts_neighbours_within_a_few_std() -> None:
    x = torch.tensor([[0.0, 0, 0, 0], [0.0, 0, 0, 0], [5.0, 5, 5, 5]])
    torch.testing.assert_close(kde(x, std=0.1, chunk=2), torch.tensor([2.0, 2.0, 1.0]))


def test_sampling_draws_only_certain_matches_and_is_seeded() -> None:
    h, w = 20, 30
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    matches = torch.stack((xs, ys, xs, ys), dim=-1)
    certainty = torch.zeros(h, w)
    certainty[5:15, 10:20] = 0.5  # above the 0.05 threshold -> weight 1
    draws = [sample_matches(matches, certainty, 50, 0.05, True, torch.Generator().manual_seed(3)) for _ in range(2)]
    (m, c), (m2, _) = draws
    assert len(m) == 50 and torch.equal(m, m2)
    assert torch.all(c == 0.5)  # the real certainty is returned, not the thresholded weight
    assert torch.all((m[:, 0] >= xs[0, 10]) & (m[:, 0] <= xs[0, 19]) & (m[:, 1] >= ys[5, 0]) & (m[:, 1] <= ys[14, 0]))


def test_sample_warp_reads_an_affine_warp_exactly_between_pixels() -> None:
    h, w = 12, 16
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h, dtype=torch.float64),
                            torch.linspace(-1 + 1 / w, 1 - 1 / w, w, dtype=torch.float64), indexing="ij")
    warp = torch.stack((0.5 * xs + 0.1, 0.8 * ys - 0.2), dim=-1)  # affine: bilinear interpolation is exact
    certainty = (xs + 2) / 4
    points = torch.tensor([[0.0, 0.0], [0.3, -0.45], [-0.7, 0.6]], dtype=torch.float64)
    positions, score = sample_warp(warp, certainty, points)
    torch.testing.assert_close(positions, torch.stack((0.5 * points[:, 0] + 0.1, 0.8 * points[:, 1] - 0.2), -1))
    torch.testing.assert_close(score, (points[:, 0] + 2) / 4)


def test_mutual_nearest_matches_follow_romas_rule() -> None:
    predicted = torch.tensor([[0.0, 0.0], [0.001, 0.0], [0.5, 0.5], [-0.5, 0.5], [0.9, -0.9]])
    score = torch.tensor([0.9, 0.8, 0.7, 0.0, 0.6])
    keypoints = torch.tensor([[0.5, 0.502], [0.0005, 0.0], [-0.5, 0.5], [0.9, -0.8]])
    for chunk in (1, 2, 4096):  # the chunked distance matrix gives the same answer as the whole one
        matches, scores = mutual_nearest_matches(predicted, score, keypoints, 0.005, 0.0, chunk=chunk)
        # 0 and 1 both want keypoint 1; 0 is at 0.0005 and 1 at 0.0005 too: the first wins (argmin).
        # 2 -> keypoint 0 (0.002 away); 3 has zero certainty; 4's nearest (0.1 away) is too far.
        assert matches.tolist() == [1, -1, 0, -1, -1]
        torch.testing.assert_close(scores, torch.tensor([0.9, 0.0, 0.7, 0.0, 0.0]))


def test_match_keypoints_applies_the_official_rule_to_the_a_to_b_half_of_the_warp(tiny) -> None:
    """RoMa.match_keypoints on the fixture model equals RoMa's match_keypoints rule evaluated
    directly on the model's own warp: keypoints at pixel centres of the warp resolution (where
    bilinear sampling returns the warp value itself), mutual nearest in B within 0.005."""
    model, fixture = tiny
    height, width = fixture["config"]["upsample_res"]
    generator = torch.Generator().manual_seed(0)
    image0, image1 = torch.rand(2, 1, 3, height, width, generator=generator)
    warp, certainty = model.match(image0, image1)
    a_to_b, cert = warp[0, :, :width, 2:], certainty[0, :, :width]
    rows, cols = torch.meshgrid(torch.arange(3, height, 7), torch.arange(2, width, 7), indexing="ij")
    keypoints0 = torch.stack((cols.reshape(-1), rows.reshape(-1)), -1).float()
    landing = normalized_to_pixels(a_to_b[rows.reshape(-1), cols.reshape(-1)], height, width)
    keypoints1 = torch.cat([landing[::2] + 0.3, torch.rand(40, 2, generator=generator) * torch.tensor([width, height])])
    matches, scores = model.match_keypoints({"image0": image0, "image1": image1, "keypoints0": keypoints0,
                                             "keypoints1": keypoints1})
    # The official rule, written out on the whole distance matrix.
    x_a_to_b = a_to_b[rows.reshape(-1), cols.reshape(-1)]
    distance = torch.cdist(x_a_to_b, pixels_to_normalized(keypoints1, height, width))
    mutual = (distance == distance.min(dim=1, keepdim=True).values) & (distance == distance.min(dim=0, keepdim=True).values)
    cert_a = cert[rows.reshape(-1), cols.reshape(-1)]
    official = mutual & (cert_a[:, None] > 0) & (distance < 0.005)
    expected = torch.where(official.any(1), official.float().argmax(1), -1)
    assert int((expected >= 0).sum()) >= 10  # the check has matches to compare
    assert matches.tolist() == expected.tolist()
    torch.testing.assert_close(scores[matches >= 0], cert_a[matches >= 0], atol=1e-6, rtol=0)
