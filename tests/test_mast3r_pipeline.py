"""The whole configs/mast3r.yaml pipeline on the CPU with the tiny seeded MASt3R checkpoint and its
tiny retrieval checkpoint: the MASt3R-SfM pair graph on the encoder tokens (cached once per image
and reused by the matcher), MASt3R anchors and matches in hloc's files, canonical pointmaps, the
database, the sparse global alignment mapper with BA, and the model. The tiny network's geometry
is meaningless: this checks the wiring, shapes and file formats, not accuracy."""
from __future__ import annotations

import h5py
import numpy as np
import PIL.Image
import pycolmap
import pytest
import torch

from conftest import shared_path
from helpers import count_batches, temple_subset
import matchers
from matchers.mast3r import AsymmetricMASt3R, EncoderCache, load_image
from recon.config import load_config
from recon.fingerprint import content_digest
from recon.graph import PAIR_STRATEGIES, PairsContext
from recon.graph.scene_graph import image_similarity, scene_graph, seeded_start
from recon.graph.tokens import TokenCache
from recon.io import h5
from recon.io.pairs import read_pairs
from recon.match.mast3r import TOKENS_FILE, encoder_key, encoder_token_cache
from recon.pipeline import reconstruct

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH, HEIGHT, SIZE = 160, 120, 160  # network input 160x112 after the patch crop: 20x14 anchors
TOKENS = (112 // 16) * (160 // 16)  # encoder tokens per image
FIX = ("fixtures", "mast3r")


def small_temple(tmp_path, count=3):
    raw = temple_subset(tmp_path / "raw", count=count)
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(raw.iterdir()):
        PIL.Image.open(path).resize((WIDTH, HEIGHT), PIL.Image.LANCZOS).save(images / path.name)
    return images


@pytest.fixture
def encoder_calls(monkeypatch):
    """Counts MASt3R encoder passes (images encoded), calling the real encoder."""
    return count_batches(monkeypatch, AsymmetricMASt3R, "encode")


def test_mast3r_preset_runs_end_to_end(tmp_path, encoder_calls):
    images = small_temple(tmp_path, count=4)
    weights = shared_path(*FIX, "tiny_ckpt.pth")
    retrieval = shared_path(*FIX, "tiny_retrieval_trainingfree.pth")
    # random weights, meaningless geometry: keep every match and every triangulated point
    config = load_config("mast3r", [f"matcher.weights={weights}", f"matcher.size={SIZE}", "device=cpu",
                                    f"pairs.retrieval_weights={retrieval}", "pairs.num_keyframes=1",
                                    "pairs.all_pairs_share=0",  # the graph, even of 4 images
                                    "pairs.num_neighbors=1", "mapper.matching_conf_thr=0", "mapper.niter1=20",
                                    "mapper.niter2=20", "mapper.max_reproj_error=0"])
    assert config["pairs"]["name"] == "mast3r_graph" and config["pairs"]["tokens"] == "mast3r"
    out = tmp_path / "out"
    model, report = reconstruct(images, out, config)

    names = sorted(p.name for p in images.iterdir())
    # one encoder pass per image for the graph and the matcher together
    assert sum(encoder_calls) == len(names)
    with h5py.File(out / TOKENS_FILE, "r") as f:
        assert sorted(f) == names
        assert all(f[n]["tokens"].shape == (TOKENS, 64) and f[n]["tokens"].dtype == np.float32 for n in names)
    # pairs.txt is the MASt3R-SfM graph of those tokens: 1 keyframe star + 1-NN, fewer than all 6 pairs
    pairs = read_pairs(out / "pairs.txt")
    similarity = image_similarity(TokenCache(out / TOKENS_FILE), names, config["pairs"], seed=config["seed"])
    expected, _ = scene_graph(similarity, 1, 1, seeded_start(len(names), config["seed"]))
    assert sorted(tuple(sorted(p)) for p in pairs) == [(names[i], names[j]) for i, j in expected.tolist()]
    assert len(names) - 1 <= len(pairs) < len(names) * (len(names) - 1) // 2
    anchors = (112 // 8) * (160 // 8)
    for name in names:
        features = h5.read_features(out / "features.h5", name)
        assert features["keypoints"].shape == (anchors, 2)
        assert features["image_size"].tolist() == [WIDTH, HEIGHT]
        kp = features["keypoints"]  # anchors in original pixels: inside the image, on a regular grid
        assert kp.min() >= 0 and kp[:, 0].max() < WIDTH and kp[:, 1].max() < HEIGHT
    with h5py.File(out / "matches.h5", "r") as f:
        for a, b in pairs:
            key, _ = h5.find_pair(f, a, b)
            assert f[key]["matches0"].dtype == np.int32 and f[key]["matches0"].shape == (anchors,)
            assert f[key]["matching_scores0"].shape == (anchors,)
    with h5py.File(out / "mast3r-canonical.h5", "r") as f:
        assert sorted(f.attrs["pairs"]) == sorted(h5.names_to_pair(a, b) for a, b in pairs)
        for name in names:
            assert f[name]["points"].shape == (anchors, 3) and f[name]["confidence"].shape == (anchors,)
            assert np.isfinite(f[name]["points"][()]).all() and (f[name]["confidence"][()] > 0).all()

    assert report["num_registered"] == len(names) and report["num_points"] > 0
    reread = pycolmap.Reconstruction(out / "sparse" / "0")
    assert sorted(im.name for im in reread.images.values()) == names
    assert all(len(im.points2D) == anchors for im in reread.images.values())
    with pycolmap.Database.open(str(out / "database.db")) as db:
        assert {im.name: im.image_id for im in db.read_all_images()} == {im.name: im.image_id for im in reread.images.values()}
    assert (out / "points.ply").exists() and (out / "report.json").exists()

    # a second run reuses every stage's output, the encoder tokens included
    encoder_calls.clear()
    _, again = reconstruct(images, out, config)
    assert again["computed"]["matches"] == 0 and again["computed"]["mapping"] == 0 and not encoder_calls


def test_cached_tokens_are_the_encoder_output_bit_for_bit(tmp_path):
    """What the matcher reads back from mast3r-tokens.h5 is exactly a fresh encoding; an edited
    image invalidates its entry (the cache is keyed by content, not by name)."""
    images = small_temple(tmp_path, count=1)
    name = next(images.iterdir()).name
    weights = str(shared_path(*FIX, "tiny_ckpt.pth"))
    cache = encoder_token_cache(images, tmp_path, weights, SIZE, torch.device("cpu"))
    cache.fill([name])
    model = matchers.load("mast3r", weights=weights)
    image = load_image(images / name, size=SIZE)
    fresh = model.encode(image.img)
    encodings = EncoderCache(model)
    encodings.add(name, cache.tokens(name), image.size)
    reread = encodings(name, image)
    assert torch.equal(reread.feat, fresh.feat) and torch.equal(reread.pos, fresh.pos)
    assert reread.image_size == fresh.image_size == image.size and encodings.encoded == 0

    before = cache.tokens(name)
    PIL.Image.open(images / name).transpose(PIL.Image.FLIP_LEFT_RIGHT).save(images / name)
    edited = encoder_token_cache(images, tmp_path, weights, SIZE, torch.device("cpu"))
    assert edited.cached([name]) == []
    assert not torch.equal(edited.tokens(name), before)


def test_mast3r_graph_tokens_follow_the_matcher_checkpoint_and_size(tmp_path):
    """``tokens: mast3r`` without a retrieval checkpoint: raw encoder tokens, PCA whitening fitted on
    them. The encoder is the matcher's (checkpoint and size) unless ``encoder_*`` say otherwise."""
    images = small_temple(tmp_path, count=4)
    names = sorted(p.name for p in images.iterdir())
    weights = str(shared_path(*FIX, "tiny_ckpt.pth"))
    context = PairsContext(images, tmp_path, matcher={"name": "mast3r", "weights": weights, "size": SIZE})
    strategy = PAIR_STRATEGIES.get("mast3r_graph").function
    pairs = strategy(names, PAIR_STRATEGIES.conf("mast3r_graph", {"tokens": "mast3r", "num_keyframes": 1,
                                                                            "all_pairs_share": 0}), context)
    assert {n for pair in pairs for n in pair} == set(names) and len(pairs) >= len(names) - 1
    with h5py.File(tmp_path / TOKENS_FILE, "r") as f:
        for name in names:
            assert f[name].attrs["key"] == encoder_key(weights, SIZE, content_digest(images / name))
            assert f[name]["tokens"].shape == (TOKENS, 64)

    strategy(names, PAIR_STRATEGIES.conf("mast3r_graph", {"tokens": "mast3r", "encoder_size": 128,
                                                                "all_pairs_share": 0}), context)
    with h5py.File(tmp_path / TOKENS_FILE, "r") as f:  # 128x96 input: 8x6 tokens, re-encoded
        assert all(f[name]["tokens"].shape == (48, 64) for name in names)
