"""``tokens: dinov2``: DINOv2 patch tokens as the pair graph's token source.

A seeded, randomly initialised tiny DINOv2 (the official class and key layout, width 64, depth 2)
saved as a checkpoint file stands in for the official weights, which are not on this machine: it
checks the wiring (input preparation, the cache, encode-once, the errors), not retrieval quality.
No test touches the network: the offline test refuses any download.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import PIL.Image
import pytest
import torch

import matchers
from matchers.backbones.dinov2 import (IMAGENET_MEAN, IMAGENET_STD, DinoVisionTransformer, dinov2_vits14,
                                       dinov2_vits14_reg)
from matchers.base import ConfigError
from matchers.weights import WeightsNotFoundError, checkpoint
from recon.cli import main
from recon.config import load_config
from recon.fingerprint import content_digest
from recon.graph import PAIR_STRATEGIES, PairsContext
from recon.graph.dinov2 import TOKENS_FILE, dinov2_key, dinov2_token_cache, input_size, prepare_image
from recon.io.pairs import read_pairs
from helpers import count_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "sample" / "images"
SIZE = 112  # 512x384 views -> 112x84 input, 8x6 = 48 patch tokens
TOKENS = 48
WIDTH = 64  # one head of 64 channels (every DINOv2 has heads of 64)


@pytest.fixture
def images(tmp_path) -> Path:
    """Five views of the bundled sample scene, copied (one test edits an image)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        shutil.copy(SAMPLE / f"view_{index:03d}.png", folder)
    return folder


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    """A seeded random ViT-S/14-family model of width 64 and depth 2, saved as a flat state dict
    in the official layout (the file's shapes set the sizes)."""
    torch.manual_seed(0)
    model = dinov2_vits14(embed_dim=WIDTH, num_heads=1, depth=2, img_size=56)
    path = tmp_path / "tiny_dinov2.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def forward_calls(monkeypatch) -> list[int]:
    """Images passed through DINOv2 (the real forward is called)."""
    return count_batches(monkeypatch, DinoVisionTransformer, "forward_features")


def graph_conf(weights: Path, **options) -> dict:
    return PAIR_STRATEGIES.conf("mast3r_graph", {"tokens": "dinov2", "encoder_weights": str(weights),
                                                 "encoder_size": SIZE, "dinov2_model": "vits14",
                                                 "all_pairs_share": 0, **options})  # the graph of 5 images


def test_input_size_keeps_the_aspect_with_sides_multiple_of_the_patch():
    assert input_size(512, 384, 518, 14) == (518, 392)  # 37 x 28 patches
    assert input_size(384, 512, 518, 14) == (392, 518)
    assert input_size(512, 384, 112, 14) == (112, 84)
    assert input_size(4000, 100, 518, 14) == (518, 14)  # never below one patch


def test_prepared_image_is_the_resized_rgb_normalised_with_imagenet_statistics(images):
    path = images / "view_000.png"
    prepared = prepare_image(path, 518, 14)
    assert prepared.shape == (1, 3, 392, 518) and prepared.dtype == torch.float32
    resized = np.asarray(PIL.Image.open(path).convert("RGB").resize((518, 392), PIL.Image.Resampling.BICUBIC))
    rgb = prepared[0] * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    torch.testing.assert_close(rgb, torch.from_numpy(resized.copy()).permute(2, 0, 1) / 255, atol=1e-6, rtol=0)


def test_dinov2_graph_encodes_each_image_once_and_never_again(images, tmp_path, tiny_weights, forward_calls):
    names = sorted(p.name for p in images.iterdir())
    out = tmp_path / "out"
    context = PairsContext(images, out, device=torch.device("cpu"), seed=0)
    strategy = PAIR_STRATEGIES.get("mast3r_graph").function
    pairs = strategy(names, graph_conf(tiny_weights, num_keyframes=2, num_neighbors=1), context)
    assert forward_calls == [1] * len(names)
    # 2 keyframes (1 pair) + 3 images to their nearest keyframe + 1-NN: every image linked, no self pair
    assert {n for pair in pairs for n in pair} == set(names)
    assert all(a < b for a, b in pairs) and len(set(pairs)) == len(pairs) >= len(names) - 1
    with h5py.File(out / TOKENS_FILE, "r") as f:
        assert sorted(f) == names
        for name in names:
            assert f[name]["tokens"].shape == (TOKENS, WIDTH) and f[name]["tokens"].dtype == np.float32
            assert f[name].attrs["key"] == dinov2_key("vits14", str(tiny_weights), SIZE, content_digest(images / name))

    forward_calls.clear()
    again = strategy(names, graph_conf(tiny_weights, num_keyframes=2, num_neighbors=1), context)
    assert forward_calls == [] and again == pairs  # a rerun reads the cache: same tokens, same seeded graph


def test_cached_tokens_equal_a_direct_forward_of_the_checkpoint(images, tmp_path, tiny_weights):
    name = "view_002.png"
    cache = dinov2_token_cache(images, tmp_path, "vits14", str(tiny_weights), SIZE, "cpu")
    cache.fill([name])
    model = matchers.load("dinov2_vits14", weights=tiny_weights, embed_dim=WIDTH, num_heads=1, depth=2, img_size=56)
    with torch.no_grad():
        direct = model.forward_features(prepare_image(images / name, SIZE, 14))["x_norm_patchtokens"][0]
    assert direct.shape == (TOKENS, WIDTH)
    torch.testing.assert_close(cache.tokens(name), direct, atol=1e-6, rtol=1e-6)


def test_another_size_or_an_edited_image_is_encoded_again(images, tmp_path, tiny_weights, forward_calls):
    names = sorted(p.name for p in images.iterdir())
    dinov2_token_cache(images, tmp_path, "vits14", str(tiny_weights), SIZE, "cpu").fill(names)
    forward_calls.clear()
    bigger = dinov2_token_cache(images, tmp_path, "vits14", str(tiny_weights), 126, "cpu")  # 126x98: 9x7
    bigger.fill(names)
    assert forward_calls == [1] * len(names) and bigger.tokens(names[0]).shape == (63, WIDTH)

    forward_calls.clear()
    edited = names[1]
    before = bigger.tokens(edited)
    PIL.Image.open(images / edited).transpose(PIL.Image.FLIP_LEFT_RIGHT).save(images / edited)
    again = dinov2_token_cache(images, tmp_path, "vits14", str(tiny_weights), 126, "cpu")
    assert again.cached(names) == [n for n in names if n != edited]
    again.fill(names)
    assert forward_calls == [1] and not torch.equal(again.tokens(edited), before)


def test_a_checkpoint_rewritten_at_the_same_path_invalidates_the_cached_tokens(images, tmp_path, tiny_weights,
                                                                              forward_calls):
    names = sorted(p.name for p in images.iterdir())
    dinov2_token_cache(images, tmp_path, "vits14", str(tiny_weights), SIZE, "cpu").fill(names)
    state = torch.load(tiny_weights, weights_only=True)
    torch.save({k: v + 0.01 if k == "norm.bias" else v for k, v in state.items()}, tiny_weights)  # "retrained"
    forward_calls.clear()
    again = dinov2_token_cache(images, tmp_path, "vits14", str(tiny_weights), SIZE, "cpu")
    assert again.cached(names) == []
    again.fill(names)
    assert forward_calls == [1] * len(names)


def test_recon_pairs_cli_with_dinov2_tokens_writes_the_graph_without_features(images, tmp_path, tiny_weights):
    out = tmp_path / "out"
    code = main(["pairs", str(images), str(out), "--device", "cpu", "--set", "pairs.name=mast3r_graph",
                 "--set", "pairs.tokens=dinov2", "--set", "pairs.dinov2_model=vits14",
                 "--set", f"pairs.encoder_weights={tiny_weights}", "--set", f"pairs.encoder_size={SIZE}",
                 "--set", "pairs.all_pairs_share=0"])
    assert code == 0
    pairs = read_pairs(out / "pairs.txt")
    names = sorted(p.name for p in images.iterdir())
    assert {n for pair in pairs for n in pair} == set(names) and 0 < len(pairs) <= len(names) * (len(names) - 1) // 2
    assert (out / TOKENS_FILE).exists() and not (out / "features.h5").exists()  # no extractor ran


def test_offline_without_weights_names_the_url_and_the_expected_path(images, tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("RECON_WEIGHTS", str(weights))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(url, *args, **kwargs):
        raise OSError(f"network disabled in this test ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    names = sorted(p.name for p in images.iterdir())
    conf = PAIR_STRATEGIES.conf("mast3r_graph", {"tokens": "dinov2", "encoder_size": SIZE,
                                                  "all_pairs_share": 0})  # default vitb14
    context = PairsContext(images, tmp_path / "out", device=torch.device("cpu"))
    with pytest.raises(WeightsNotFoundError) as error:
        PAIR_STRATEGIES.get("mast3r_graph").function(names, conf, context)
    entry = checkpoint("dinov2_vitb14_pretrain")
    assert entry.url in str(error.value) and str(weights / entry.filename) in str(error.value)
    assert not (tmp_path / "out" / TOKENS_FILE).exists()  # nothing half-written


def test_bad_dinov2_options_are_config_errors_before_any_encoding(images, tmp_path, tiny_weights, forward_calls):
    with pytest.raises(ConfigError, match="unknown DINOv2 model 'vitx14'.*vitb14_reg4"):
        load_config("default", ["pairs.name=mast3r_graph", "pairs.tokens=dinov2", "pairs.dinov2_model=vitx14"])
    with pytest.raises(ConfigError, match="retrieval_weights"):
        load_config("default", ["pairs.name=mast3r_graph", "pairs.tokens=dinov2", "pairs.retrieval_weights=official"])
    names = sorted(p.name for p in images.iterdir())
    context = PairsContext(images, tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown DINOv2 model"):
        PAIR_STRATEGIES.get("mast3r_graph").function(names, graph_conf(tiny_weights, dinov2_model="vitb16"), context)
    # a plain checkpoint under a register model: the interpolation rule would be the wrong one
    with pytest.raises(ValueError, match="0 register tokens.*'vits14_reg4' has 4"):
        PAIR_STRATEGIES.get("mast3r_graph").function(names, graph_conf(tiny_weights, dinov2_model="vits14_reg4"),
                                                     context)
    assert forward_calls == [] and not (tmp_path / "out" / TOKENS_FILE).exists()


def test_register_checkpoint_runs_as_the_reg4_model(images, tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "tiny_reg.pth"
    torch.save(dinov2_vits14_reg(embed_dim=WIDTH, num_heads=1, depth=1, img_size=56).state_dict(), path)
    cache = dinov2_token_cache(images, tmp_path, "vits14_reg4", str(path), SIZE, "cpu")
    assert cache.tokens("view_000.png").shape == (TOKENS, WIDTH)  # registers are not patch tokens
