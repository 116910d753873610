"""MASt3R retrieval checkpoint loading and token whitening/selection against the official
``retrieval_e2e.pt`` (Retriever run end to end with the tiny backbone on 6 temple images)."""
from __future__ import annotations

import pickle

import pytest
import torch

import matchers
from matchers.mast3r.matching import load_image
from matchers.mast3r.retrieval import codebook_path_for, load_retrieval_checkpoint, local_features, read_codebook, whiten
from conftest import shared_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def e2e() -> dict:
    return torch.load(shared_path("fixtures", "mast3r", "retrieval_e2e.pt"), weights_only=True)


@pytest.fixture(scope="module")
def ckpt():
    return load_retrieval_checkpoint(shared_path("fixtures", "mast3r", "tiny_retrieval_trainingfree.pth"))


def test_checkpoint_and_codebook_load(ckpt, e2e):
    assert codebook_path_for("/a/tiny_retrieval_trainingfree.pth").name == "tiny_retrieval_codebook.pkl"
    assert torch.equal(ckpt.prewhiten_m, e2e["prewhiten_m"]) and torch.equal(ckpt.prewhiten_p, e2e["prewhiten_p"])
    assert ckpt.codebook.shape == (32, 64) and ckpt.nfeat == 300 and ckpt.imsize == 512


def test_codebook_reader_runs_no_code(tmp_path):
    path = tmp_path / "evil_codebook.pkl"
    path.write_bytes(pickle.dumps({"type": "Codebook", "params": {"size": 1}, "state": {"centroids": print}}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_codebook(path)


def test_whitening_and_local_features_equal_official(ckpt, e2e):
    tokens = e2e["enc_tokens"]
    torch.testing.assert_close(whiten(tokens[0], ckpt), e2e["img0_whitened_tokens"], rtol=0, atol=1e-5)
    feat, attn, idx = local_features(tokens, ckpt)
    assert torch.equal(idx, e2e["local_idx"])  # exact on the stored official tokens
    torch.testing.assert_close(feat, e2e["local_feats"], rtol=0, atol=1e-5)
    torch.testing.assert_close(attn, e2e["local_attn"], rtol=0, atol=1e-5)


@torch.no_grad()
def test_encoder_tokens_for_retrieval_equal_official(e2e):
    model = matchers.load("mast3r", weights=shared_path("fixtures", "mast3r", "tiny_ckpt.pth"))
    names = e2e["meta"]["query_images"][:2]
    imgs = torch.cat([load_image(shared_path("data", name), size=512).img for name in names])
    torch.testing.assert_close(model.encode(imgs).feat, e2e["enc_tokens"][:2], rtol=0, atol=1e-5)
