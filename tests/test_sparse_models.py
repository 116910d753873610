"""Sparse matchers have the official architectures: state-dict keys and shapes equal the
manifests of the official classes, checkpoint layouts are remapped as documented, and the
post-processing pieces give known answers on tiny inputs.

Manifests: ``shared/fixtures/manifests/*.json`` (built from the official classes; see its README).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import matchers
from matchers.keypoints import keypoints_to_original, simple_nms
from matchers.superpoint import sample_descriptors
from conftest import shared_path

# recon model name -> manifest of the official class it must equal.
ARCHITECTURES = {
    "superpoint": "superpoint_magicleap",
    "gim_superpoint": "gim_lightglue_superpoint",
    "disk": "disk_kornia",
    "aliked": "aliked_n16",
    "superpoint_lightglue": "lightglue_superpoint",
    "aliked_lightglue": "lightglue_aliked",
    "disk_lightglue": "lightglue_disk",
    "gim_lightglue": "gim_lightglue_matcher",
}


def manifest(name: str) -> dict:
    return json.loads(shared_path("fixtures", "manifests", f"{name}.json").read_text())


def shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("model, manifest_name", sorted(ARCHITECTURES.items()))
def test_state_dict_equals_official_manifest(model, manifest_name):
    expected = {k: v["shape"] for k, v in manifest(manifest_name)["state_dict"].items()}
    if manifest_name == "gim_lightglue_matcher":
        # glue-factory's LightGlue keeps the derived confidence thresholds as a plain list; cvg's
        # (and ours) as a buffer of n_layers values. GIM's matcher is otherwise lightglue_superpoint.
        expected["confidence_thresholds"] = [9]
    assert shapes(matchers.load(model).state_dict()) == expected


def random_state(manifest_name: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout of a manifest (the buffer no checkpoint holds left out)."""
    return {k: torch.randn(v["shape"], generator=generator) for k, v in manifest(manifest_name)["state_dict"].items()
            if k != "confidence_thresholds"}


def test_gim_lightning_checkpoint_splits_into_detector_and_matcher(tmp_path):
    """GIM's file: ckpt["state_dict"] with 'superpoint.' (detector) and 'model.' (matcher) keys."""
    generator = torch.Generator().manual_seed(0)
    detector = random_state("gim_lightglue_superpoint", generator)
    matcher = random_state("gim_lightglue_matcher", generator)
    assert manifest("gim_lightglue_superpoint")["checkpoint"]["prefix"] == "superpoint."
    assert manifest("gim_lightglue_matcher")["checkpoint"]["prefix"] == "model."
    path = tmp_path / "gim_lightglue_100h.ckpt"
    torch.save({"epoch": 3, "global_step": 100, "state_dict": {
        **{"superpoint." + k: v for k, v in detector.items()}, **{"model." + k: v for k, v in matcher.items()}}}, path)
    for model, expected in (("gim_superpoint", detector), ("gim_lightglue", matcher)):
        state = matchers.load(model, weights=path).state_dict()
        for key, value in expected.items():
            assert torch.equal(state[key], value), (model, key)


def test_lightglue_old_layer_names_are_renamed_and_unused_tensors_dropped(tmp_path):
    """Release files name layers 'self_attn.{i}' / 'cross_attn.{i}' and disk_lightglue.pth carries
    unused 'log_assignment.{i}.r' tensors; both must load strictly into the current layout."""
    state = random_state("lightglue_disk", torch.Generator().manual_seed(1))
    old = {re.sub(r"^transformers\.(\d+)\.(self_attn|cross_attn)\.", r"\2.\1.", k): v for k, v in state.items()}
    old.update({f"log_assignment.{i}.r": torch.zeros(1) for i in range(9)})
    assert "self_attn.0.Wqkv.weight" in old and "cross_attn.8.to_qk.weight" in old
    path = tmp_path / "disk_lightglue.pth"
    torch.save(old, path)
    loaded = matchers.load("lightglue", weights=path, features="disk").state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_simple_nms_keeps_window_maxima_and_ties():
    scores = torch.zeros(1, 1, 7, 9)
    scores[0, 0, 3, 2] = 0.9   # peak
    scores[0, 0, 3, 3] = 0.5   # its neighbour: suppressed
    scores[0, 0, 3, 7] = 0.4   # a tie pair: the reference keeps both
    scores[0, 0, 4, 7] = 0.4
    kept = simple_nms(scores, radius=1)[0, 0].nonzero().tolist()
    assert kept == [[3, 2], [3, 7], [4, 7]]


def test_keypoints_to_original_scales_pixel_areas():
    """hloc: a 2x downscale maps resized pixel 0 (covering original pixels 0 and 1) to 0.5."""
    keypoints = torch.tensor([[[0.0, 0.0], [10.0, 4.0]]])
    original = keypoints_to_original(keypoints, torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(original, torch.tensor([[[0.5, 1.5], [20.5, 17.5]]]))


def test_superpoint_descriptor_sampling_uses_superglues_legacy_mapping():
    """SuperGlue's (legacy) sampling maps pixel s/2 - 0.5 = 3.5 onto the first 8x8 cell and the
    last pixel centre (8w - 1, 8h - 1) onto the last cell, interpolating linearly in between."""
    descriptors = torch.zeros(1, 3, 3, 5)
    descriptors[0, 0, 0, 0] = 1.0
    descriptors[0, 1, 2, 4] = 1.0
    descriptors[0, 2] = 0.5
    keypoints = torch.tensor([[[3.5, 3.5], [8 * 5 - 1.0, 8 * 3 - 1.0]]])
    sampled = sample_descriptors(keypoints, descriptors, 8)
    expected = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    torch.testing.assert_close(sampled[0], expected / expected.norm(dim=-1, keepdim=True))


@pytest.mark.parametrize("model, channels", [("superpoint", 1), ("disk", 3), ("aliked", 3)])
def test_extractors_return_the_recon_interface(model, channels):
    torch.manual_seed(0)
    extractor = matchers.load(model)
    image = torch.rand(1, channels, 64, 80)
    with torch.no_grad():
        out = extractor({"image": image})
    n = out["keypoints"].shape[1]
    assert out["descriptors"].shape[:2] == (1, n) and out["scores"].shape == (1, n)
    assert (out["keypoints"] >= 0).all() and (out["keypoints"][..., 0] <= 79).all() and (out["keypoints"][..., 1] <= 63).all()
    torch.testing.assert_close(out["descriptors"].norm(dim=-1), torch.ones(1, n))


def test_aliked_image_size_is_the_valid_region_of_a_padded_input():
    """With image_size (W, H) smaller than the tensor (a batch padded bottom/right), no keypoint
    comes from the padding; an image_size larger than the tensor is a caller error."""
    torch.manual_seed(0)
    extractor = matchers.load("aliked")
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        keypoints = extractor({"image": image, "image_size": torch.tensor([[60, 40]])})["keypoints"][0]
        assert len(keypoints) > 0
        assert (keypoints[:, 0] < 60).all() and (keypoints[:, 1] < 40).all()
        with pytest.raises(ValueError, match="valid region"):
            extractor({"image": image, "image_size": torch.tensor([[1080, 720]])})
