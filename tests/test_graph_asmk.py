"""ASMK against the official asmk package and MASt3R Retriever fixtures (shared/fixtures/mast3r)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from recon.graph.asmk import ASMKParams, Codebook, aggregate, collection_similarity, pack_bits, unpack_signs
from recon.graph.tokens import Whitening, select_tokens
from conftest import shared_path


@pytest.fixture(scope="module")
def asmk_io():
    return dict(np.load(shared_path("fixtures", "mast3r", "asmk_io.npz"), allow_pickle=False))


def official_uint32(bits: torch.Tensor) -> np.ndarray:
    """Our MSB-first bytes regrouped as the official MSB-first uint32 words."""
    b = bits.numpy().astype(np.uint32).reshape(len(bits), -1, 4)
    return (b[..., 0] << 24) | (b[..., 1] << 16) | (b[..., 2] << 8) | b[..., 3]


def test_official_codebook_pickle_loads_and_matches(asmk_io):
    codebook = Codebook.load(shared_path("fixtures", "mast3r", "asmk_codebook.pkl"))
    np.testing.assert_array_equal(codebook.centroids.numpy(), asmk_io["codebook_centroids"])


def test_kmeans_reproduces_official_codebook(asmk_io):
    # official asmk: faiss Clustering, 10 iterations, faiss's default seed 1234
    codebook = Codebook.train(torch.from_numpy(asmk_io["descriptors"]), 16, seed=1234)
    np.testing.assert_allclose(codebook.centroids.numpy(), asmk_io["codebook_centroids"], atol=1e-5)


def test_quantize_aggregate_binarize_match_official(asmk_io):
    codebook = Codebook(torch.from_numpy(asmk_io["codebook_centroids"]))
    x = torch.from_numpy(asmk_io["descriptors"])
    ids = torch.from_numpy(asmk_io["image_ids"])
    words = codebook.quantize(x, 5)
    np.testing.assert_array_equal(words.numpy(), asmk_io["query_word_ids"])
    np.testing.assert_array_equal(words[:, :1].numpy(), asmk_io["db_word_ids"])
    for side, m in (("db", 1), ("query", 5)):
        agg = aggregate(x, words[:, :m], ids, codebook.centroids)
        np.testing.assert_array_equal(agg.words.numpy(), asmk_io[f"{side}_agg_words"])
        np.testing.assert_array_equal(agg.images.numpy(), asmk_io[f"{side}_agg_image_ids"])
        np.testing.assert_array_equal(official_uint32(agg.bits), asmk_io[f"{side}_agg_bits"])


def test_similarity_matches_official_scores(asmk_io):
    codebook = Codebook(torch.from_numpy(asmk_io["codebook_centroids"]))
    scores = collection_similarity(torch.from_numpy(asmk_io["descriptors"]), torch.from_numpy(asmk_io["image_ids"]),
                                   6, codebook, ASMKParams())
    np.testing.assert_allclose(scores.numpy(), asmk_io["scores"], atol=1e-5, rtol=0)
    assert not np.allclose(asmk_io["scores"], asmk_io["scores"].T)  # the fixture does test asymmetry


def test_retriever_end_to_end_matches_official():
    folder = shared_path("fixtures", "mast3r")
    e2e = torch.load(folder / "retrieval_e2e.pt", weights_only=True)
    whitening = Whitening.from_checkpoint(folder / "tiny_retrieval_trainingfree.pth")
    torch.testing.assert_close(whitening(e2e["enc_tokens"][0]), e2e["img0_whitened_tokens"], atol=1e-5, rtol=0)
    selected = [select_tokens(whitening(t), 300) for t in e2e["enc_tokens"]]
    torch.testing.assert_close(torch.stack(selected), e2e["local_feats"], atol=1e-5, rtol=0)
    codebook = Codebook.load(folder / "tiny_retrieval_codebook.pkl")
    scores = collection_similarity(torch.cat(selected), torch.arange(6).repeat_interleave(300), 6, codebook)
    torch.testing.assert_close(scores.double(), e2e["scores"], atol=1e-5, rtol=0)


def test_codebook_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"type": "Codebook", "state": {"centroids": print}}))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        Codebook.load(path)


def test_codebook_save_load_roundtrip(tmp_path):
    codebook = Codebook(torch.randn(8, 5))
    codebook.save(tmp_path / "c.pkl")
    torch.testing.assert_close(Codebook.load(tmp_path / "c.pkl").centroids, codebook.centroids)


def test_two_level_codebook_is_exact_when_probing_every_cell():
    x = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    codebook = Codebook.train(x, 256, coarse_size=16, probes=16)
    assert codebook.size == 256 and codebook.coarse.shape == (16, 16)
    flat = Codebook(codebook.centroids)
    torch.testing.assert_close(codebook.quantize(x, 5), flat.quantize(x, 5), rtol=0, atol=0)


def test_bits_pack_and_unpack_to_signs():
    positive = torch.rand(7, 37, generator=torch.Generator().manual_seed(1)) > 0.5
    bits = pack_bits(positive)
    assert bits.shape == (7, 5) and bits.dtype == torch.uint8
    torch.testing.assert_close(unpack_signs(bits, 37), positive.float() * 2 - 1)


def test_pca_whitening_decorrelates():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(5000, 6, generator=generator) @ torch.randn(6, 6, generator=generator) + 3
    white = Whitening.fit(x)(x).double()
    torch.testing.assert_close(white.T @ white / len(white), torch.eye(6, dtype=torch.float64), atol=1e-4, rtol=0)
