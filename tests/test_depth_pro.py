"""Depth Pro: official layout (manifest), numerics against the official tiny fixture, loading."""
from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

import matchers
from matchers.depth_pro import DepthPro, metric_depth
from matchers.depth_pro.encoder import merge_patches, split_patches
from matchers.weights import checkpoint

from conftest import shared_path

ATOL = 1e-4  # the fixture README's tolerance for depth-related tensors


def tiny_conf(config: dict) -> dict:
    """DepthPro options of the fixture's reduced model (see fixtures/tiny/README.md)."""
    vit = config["vit"]
    return dict(vit_img_size=vit["img_size"], patch_size=vit["patch_size"], embed_dim=vit["embed_dim"],
                depth=vit["depth"], num_heads=vit["num_heads"], dims_encoder=list(config["dims_encoder"]),
                decoder_features=config["decoder_features"], last_dims=list(config["last_dims"]),
                hook_block_ids=list(config["hook_block_ids"]))


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(shared_path("fixtures", "tiny", "depth_pro_tiny.pt"), weights_only=True)


def test_state_dict_equals_official_manifest():
    manifest = json.loads(shared_path("fixtures", "manifests", "depth_pro.json").read_text())
    with torch.device("meta"):
        model = DepthPro()
    state = model.state_dict()
    assert list(state) == list(manifest["state_dict"])
    for key, tensor in state.items():
        assert list(tensor.shape) == manifest["state_dict"][key]["shape"], key
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"] == 951_991_330


def test_checkpoint_registry_entry():
    entry = checkpoint("depth_pro")
    assert entry.url == "https://ml-site.cdn-apple.com/models/depth-pro/depth_pro.pt"
    assert entry.filename == "depth_pro.pt"
    assert "depth_pro" in matchers.names()


def test_fp16_checkpoint_in_official_layout_loads_strictly_as_float32(tmp_path, fixture):
    """The release stores a flat fp16 OrderedDict; on CPU it must load into float32 modules."""
    conf = tiny_conf(fixture["config"])
    path = tmp_path / "depth_pro.pt"
    half = OrderedDict((k, v.half()) for k, v in fixture["state_dict"].items())
    torch.save(half, path)
    model = matchers.load("depth_pro", weights=path, **conf)
    state = model.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    assert all(torch.equal(state[k], v.float()) for k, v in half.items())
    del half["fov.head.4.bias"]
    torch.save(half, path)
    with pytest.raises(RuntimeError, match="fov.head.4.bias"):
        matchers.load("depth_pro", weights=path, **conf)


def test_split_then_merge_restores_the_image():
    """Tiles overlapping by 2k pixels, merged with k pixels of padding, give back the input
    (tile order: rows outer, columns inner, batch innermost)."""
    x = torch.arange(2 * 3 * 20 * 20, dtype=torch.float32).reshape(2, 3, 20, 20)
    tiles = split_patches(x, patch_size=8, overlap_ratio=0.25)  # stride 6 -> 3x3 tiles
    assert tiles.shape == (9 * 2, 3, 8, 8)
    assert torch.equal(tiles[(1 * 3 + 2) * 2 + 1], x[1, :, 6:14, 12:20])
    assert torch.equal(merge_patches(tiles, batch_size=2, padding=1), x)
    with pytest.raises(ValueError, match="cannot tile"):
        split_patches(x[..., :19, :19], patch_size=8, overlap_ratio=0.25)


def _assert_crop_and_stats(tensor: torch.Tensor, reference: dict, crop: tuple) -> None:
    crop_key = next(k for k in reference if k.startswith("crop"))
    assert tuple(tensor.shape) == tuple(reference["stats"]["shape"])
    assert (tensor[0][crop] - reference[crop_key]).abs().max() < ATOL
    assert abs(tensor.double().mean().item() - reference["stats"]["mean"]) < 1e-6
    assert abs(tensor.double().std().item() - reference["stats"]["std"]) < 1e-5


def test_tiny_model_reproduces_the_official_outputs(fixture):
    """One forward of the reduced official model on the fixture image: encoder, decoder,
    canonical inverse depth, FOV, focal and metric depth match the official run to 1e-4."""
    torch.set_num_threads(2)
    model = matchers.load("depth_pro", **tiny_conf(fixture["config"]))
    model.load_state_dict(fixture["state_dict"], strict=True)
    captured = {}
    model.encoder.register_forward_hook(lambda m, i, out: captured.update(encoder=out))
    model.decoder.register_forward_hook(lambda m, i, out: captured.update(decoder=out))
    model.head.register_forward_hook(lambda m, i, out: captured.update(canonical=out))

    image = fixture["inputs"]["image_uint8_hwc"].permute(2, 0, 1)[None].float() / 255
    assert torch.equal(image[0] * 2 - 1, fixture["inputs"]["x_normalized"])
    out = model({"image": image})

    official = fixture["outputs"]
    channels, window = slice(0, 4), slice(8, 24)
    for level, encoding in enumerate(captured["encoder"]):
        _assert_crop_and_stats(encoding, official["encoder"][f"encoding{level}"], (channels, window, window))
    features, lowres = captured["decoder"]
    _assert_crop_and_stats(features, official["decoder"]["features"], (channels, window, window))
    _assert_crop_and_stats(lowres, official["decoder"]["features_0"], (channels, slice(0, 16), slice(0, 16)))
    canonical = captured["canonical"]
    assert (canonical[0, 0, ::8, ::8] - official["forward"]["canonical_inverse_depth_stride8"]).abs().max() < ATOL
    assert (canonical[0, 0, 760:792, 760:792] - official["forward"]["canonical_inverse_depth_crop_y760_x760_32"]).abs().max() < ATOL
    assert abs(out["fov_deg"].item() - official["forward"]["fov_deg"].item()) < ATOL
    assert abs(out["focal_px"].item() - official["infer_fpx_none"]["focallength_px"].item()) < ATOL
    assert out["depth"].shape == (1, 96, 128)
    assert (out["depth"][0] - official["infer_fpx_none"]["depth"]).abs().max() < ATOL

    # A given focal length replaces the estimated one (official infer(x, f_px=100)).
    given = metric_depth(canonical, official["forward"]["fov_deg"], (96, 128), f_px=torch.tensor(100.0))
    assert given["focallength_px"].item() == 100.0
    assert (given["depth"] - official["infer_fpx_100"]["depth"]).abs().max() < ATOL


def test_precision_is_half_on_cuda_and_float32_on_cpu():
    with torch.device("meta"):
        model = DepthPro(embed_dim=32, depth=2, num_heads=2, hook_block_ids=[0, 1], dims_encoder=[16, 24, 32, 32],
                         decoder_features=16, last_dims=[8, 1])
    assert model.inference_dtype(torch.device("cuda")) == torch.float16
    assert model.inference_dtype(torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="precision"):
        DepthPro(precision="bfloat", depth=0)
