"""DINOv2 ViT backbone: official state-dict layout, token layout, masks and the official API."""
from __future__ import annotations

import json

import pytest
import torch

import matchers
from matchers.backbones.dinov2 import (DinoVisionTransformer, architecture_from_state_dict, dinov2_vitb14,
                                       dinov2_vitl14, dinov2_vits14, dinov2_vits14_reg)
from matchers.weights import checkpoint

from conftest import shared_path


@pytest.mark.parametrize("factory", [dinov2_vits14, dinov2_vitb14, dinov2_vitl14])
def test_state_dict_equals_official_manifest(factory):
    """Keys (in order), shapes and dtypes equal the hub model's (built on meta: no allocation)."""
    manifest = json.loads(shared_path("fixtures", "manifests", f"{factory.__name__}.json").read_text())
    with torch.device("meta"):
        model = factory()
    state = model.state_dict()
    assert list(state) == list(manifest["state_dict"])
    for key, tensor in state.items():
        assert list(tensor.shape) == manifest["state_dict"][key]["shape"], key
        assert str(tensor.dtype).removeprefix("torch.") == manifest["state_dict"][key]["dtype"], key
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]


def test_registered_names_and_official_urls():
    assert {"dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitl14_reg"} <= set(matchers.names())
    assert checkpoint("dinov2_vitl14_pretrain").url == \
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
    assert checkpoint("dinov2_vits14_reg4_pretrain").url == \
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"


def test_strict_load_of_a_file_in_the_official_layout(tmp_path):
    """A flat state dict saved as the hub files are loads strictly through the registry (one
    block instead of 12 to keep the test fast; the key layout is the same)."""
    torch.manual_seed(0)
    source = dinov2_vits14(depth=1)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(source.state_dict(), path)
    loaded = matchers.load("dinov2_vits14", weights=path, depth=1)
    x = torch.rand(1, 3, 56, 70)
    with torch.no_grad():
        assert torch.equal(loaded(x), source.eval()(x))
    with pytest.raises(RuntimeError, match="Missing key"):
        state = source.state_dict()
        del state["mask_token"]
        torch.save(state, path)
        matchers.load("dinov2_vits14", weights=path, depth=1)


def _tiny(**conf) -> DinoVisionTransformer:
    torch.manual_seed(0)
    options = dict(img_size=42, patch_size=14, embed_dim=8, depth=2, num_heads=2)
    return DinoVisionTransformer(**{**options, **conf}).eval()


def test_tokens_are_patch_projections_plus_position_in_row_major_order():
    """Without blocks, patch token (i, j) is the linear projection of pixel block (i, j) plus its
    position embedding; the reshaped grid puts it at [:, :, i, j]."""
    model = _tiny(depth=0)
    p = model.patch_size
    x = torch.rand(2, 3, 3 * p, 3 * p)
    with torch.no_grad():
        tokens = model.forward_features(x)["x_prenorm"]
    blocks = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, 3, 3, p, p)
    weight, bias = model.patch_embed.proj.weight, model.patch_embed.proj.bias
    expected = torch.einsum("bcijuv,dcuv->bijd", blocks, weight) + bias
    expected = expected + model.pos_embed[0, 1:].reshape(3, 3, -1)
    assert torch.allclose(tokens[:, 1:].reshape(2, 3, 3, -1), expected, atol=1e-5)
    assert torch.allclose(tokens[:, 0], (model.cls_token + model.pos_embed[:, :1])[0].expand(2, -1))
    grid = model.tokens_to_grid(tokens[:, 1:], 3 * p, 3 * p)
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 1 + 1 * 3 + 2])


def test_masked_patches_take_the_mask_token():
    model = _tiny(depth=0)
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.rand(1, 3, 42, 42)
    masks = torch.zeros(1, 9, dtype=torch.bool)
    masks[0, 4] = True
    with torch.no_grad():
        tokens = model.forward_features(x, masks=masks)["x_prenorm"]
    assert torch.allclose(tokens[0, 1 + 4], model.mask_token[0] + model.pos_embed[0, 1 + 4])
    with pytest.raises(ValueError, match="mask_token=False"):
        _tiny(mask_token=False).forward_features(x, masks=masks)


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, True)])
def test_position_embeddings_native_size_unchanged_and_constant_grid_preserved(offset, antialias):
    model = _tiny(interpolate_offset=offset, interpolate_antialias=antialias)
    assert model.interpolate_pos_encoding(10, 42, 42, torch.float32) is model.pos_embed
    with torch.no_grad():
        model.pos_embed[:, 1:] = torch.arange(8.0)  # the same vector at every grid position
    resized = model.interpolate_pos_encoding(1 + 5 * 2, 70, 28, torch.float32)
    assert resized.shape == (1, 11, 8)
    assert torch.allclose(resized[0, 1:], torch.arange(8.0).expand(10, -1), atol=1e-5)


def test_official_api_outputs_agree_with_each_other():
    """get_intermediate_layers on the last block with norm equals forward_features' tokens."""
    model = _tiny(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)
    x = torch.rand(2, 3, 56, 28)
    with torch.no_grad():
        out = model.forward_features(x)
        ((patches, cls),) = model.get_intermediate_layers(x, n=1, reshape=True, return_class_token=True)
        first, last = model.get_intermediate_layers(x, n=[0, 1], norm=False)
    assert out["x_norm_regtokens"].shape == (2, 4, 8)
    assert out["x_norm_patchtokens"].shape == (2, 8, 8)
    assert torch.allclose(patches, model.tokens_to_grid(out["x_norm_patchtokens"], 56, 28), atol=1e-6)
    assert patches.shape == (2, 8, 4, 2)
    assert torch.allclose(cls, out["x_norm_clstoken"], atol=1e-6)
    assert torch.allclose(last, out["x_prenorm"][:, 5:], atol=1e-6)
    assert not torch.allclose(first, last)


def test_register_variant_layout():
    with torch.device("meta"):
        model = dinov2_vits14_reg()
    assert model.state_dict()["register_tokens"].shape == (1, 4, 384)
    assert model.conf["interpolate_offset"] == 0.0 and model.conf["interpolate_antialias"]


@pytest.mark.parametrize("factory", [dinov2_vits14, dinov2_vitb14, dinov2_vitl14])
def test_architecture_read_from_the_official_shapes_is_the_hub_models(factory):
    """The sizes recovered from the official key/shape list (tensors on meta: no allocation) are
    the hub model's own options."""
    manifest = json.loads(shared_path("fixtures", "manifests", f"{factory.__name__}.json").read_text())
    state = {key: torch.empty(entry["shape"], device="meta") for key, entry in manifest["state_dict"].items()}
    architecture = architecture_from_state_dict(state)
    with torch.device("meta"):
        model = factory()
    assert architecture == {key: model.conf[key] for key in architecture}


def test_architecture_of_a_tiny_register_model_rebuilds_it_exactly():
    torch.manual_seed(0)
    source = dinov2_vits14_reg(embed_dim=128, num_heads=2, depth=3, img_size=42, mlp_ratio=2.0).eval()
    architecture = architecture_from_state_dict(source.state_dict())
    assert architecture["num_register_tokens"] == 4 and architecture["depth"] == 3 and architecture["img_size"] == 42
    rebuilt = dinov2_vits14_reg(**architecture).eval()
    rebuilt.load_state_dict(source.state_dict(), strict=True)
    x = torch.rand(1, 3, 56, 70)
    with torch.no_grad():
        tokens = [model.forward_features(x)["x_norm_patchtokens"] for model in (rebuilt, source)]
    assert torch.equal(*tokens)
    with pytest.raises(ValueError, match="multiple of the head size 64"):
        architecture_from_state_dict(dinov2_vits14(embed_dim=8, num_heads=2, depth=1).state_dict())
