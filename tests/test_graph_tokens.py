"""Token sources: features.h5 descriptors and the once-per-image network token cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.graph.tokens import FeatureTokens, TokenCache, select_tokens
from recon.io.h5 import H5Writer, write_features


def test_feature_tokens_are_transposed_descriptors_capped_by_score(tmp_path):
    descriptors = np.arange(12, dtype=np.float32).reshape(3, 4)  # (D=3, N=4) as in features.h5
    with H5Writer(tmp_path / "f.h5") as writer:
        write_features(writer, "a/b.jpg", np.zeros((4, 2)), descriptors, np.array([0.1, 0.9, 0.5, 0.2]), (10, 10))
    torch.testing.assert_close(FeatureTokens(tmp_path / "f.h5").tokens("a/b.jpg"), torch.from_numpy(descriptors.T))
    capped = FeatureTokens(tmp_path / "f.h5", max_tokens=2).tokens("a/b.jpg")
    torch.testing.assert_close(capped, torch.from_numpy(descriptors.T[[1, 2]]))


def test_token_cache_encodes_each_image_once(tmp_path):
    calls = []

    def encode(name: str) -> torch.Tensor:
        calls.append(name)
        return torch.full((3, 2), float(len(name)))

    cache = TokenCache(tmp_path / "tokens.h5", encode)
    cache.fill(["x.jpg", "yy.jpg"])
    first = cache.tokens("x.jpg")
    again = TokenCache(tmp_path / "tokens.h5", encode)  # a later run reuses the file
    torch.testing.assert_close(again.tokens("x.jpg"), first)
    again.tokens("zzz.jpg")
    assert calls == ["x.jpg", "yy.jpg", "zzz.jpg"]
    with pytest.raises(KeyError, match="no encoder"):
        TokenCache(tmp_path / "tokens.h5").tokens("new.jpg")


def test_select_tokens_keeps_largest_norms_in_order():
    tokens = torch.tensor([[1.0, 0], [0, 3], [2, 0], [0, 0.5]])
    torch.testing.assert_close(select_tokens(tokens, 2), tokens[[1, 2]])
    assert len(select_tokens(tokens, 0)) == 4


def test_token_cache_entries_with_another_key_are_recomputed(tmp_path):
    version = {"x.jpg": "v1"}
    cache = TokenCache(tmp_path / "tokens.h5", lambda name: torch.full((2, 2), float(len(version[name]))),
                       key=lambda name: version[name])
    cache.fill(["x.jpg"])
    assert cache.cached(["x.jpg", "y.jpg"]) == ["x.jpg"]
    version["x.jpg"] = "v22"  # e.g. the image was edited: its content digest changed
    assert cache.cached(["x.jpg"]) == []
    torch.testing.assert_close(cache.tokens("x.jpg"), torch.full((2, 2), 3.0))
    assert cache.cached(["x.jpg"]) == ["x.jpg"]
