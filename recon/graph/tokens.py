"""Token sources for retrieval: per-image sets of local descriptors that ASMK compares.

A source is anything with ``tokens(name) -> (T, D) float tensor`` (:class:`TokenSource`). Three
kinds exist:

* :class:`FeatureTokens` - the descriptors of any hloc ``features.h5`` (SIFT, ALIKED, SuperPoint,
  ...), so the scene graph works with no network at all;
* :class:`TokenCache` - an HDF5 cache ``/<name>/tokens`` (T, D) of network tokens (MASt3R encoder
  tokens, :func:`recon.match.mast3r.encoder_token_cache`; DINOv2 patch tokens,
  :func:`recon.graph.dinov2.dinov2_token_cache`). Given an ``encode(name)`` function it fills itself, once per image,
  so tokens are never recomputed per pair or per run; the network sources plug in here;
* anything else implementing the protocol.

MASt3R's retrieval model turns encoder tokens into ASMK descriptors by an optional PCA whitening
``x' = (x - m) P`` (float64, official ``Whitener``) and keeps the ``nfeat`` tokens with the largest
L2 norm after whitening (official ``how_select_local``, ``featweights='l2norm'``). :class:`Whitening`
and :func:`select_tokens` do the same; the whitening is either fitted on the collection
(:meth:`Whitening.fit`, the official ``pcawhitenlearn_shrinkage``) or read from the official
retrieval checkpoint's ``prewhiten.m`` / ``prewhiten.p`` (:meth:`Whitening.from_checkpoint`).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Protocol, Sequence

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..io.h5 import H5Writer, read_features


class TokenSource(Protocol):
    """Per-image token sets: ``tokens(name)`` -> (T, D) float tensor (T may differ per image)."""

    def tokens(self, name: str) -> torch.Tensor: ...


class FeatureTokens:
    """Local descriptors of an hloc ``features.h5`` as tokens.

    The file stores descriptors as (D, N); tokens are their transpose (N, D) float32. Only the
    ``max_tokens`` keypoints with the highest detection score are read when the file has scores
    (``0`` keeps all): a cheap cap before whitening and norm-based selection.
    """

    def __init__(self, path: str | os.PathLike, max_tokens: int = 0) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"features file {self.path} does not exist")
        self.max_tokens = max_tokens

    @cached_property
    def file(self) -> h5py.File:
        """Opened once for the whole collection (h5py closes it with the object)."""
        return h5py.File(self.path, "r")

    def tokens(self, name: str) -> torch.Tensor:
        features = read_features(self.file, name)
        if "descriptors" not in features:
            raise KeyError(f"{self.path}: image {name!r} has no descriptors (detector-only features)")
        descriptors = torch.from_numpy(np.ascontiguousarray(features["descriptors"].T, dtype=np.float32))
        if self.max_tokens and len(descriptors) > self.max_tokens and "scores" in features:
            keep = torch.topk(torch.from_numpy(features["scores"].astype(np.float32)), self.max_tokens).indices
            descriptors = descriptors[keep.sort().values]
        return descriptors


class TokenCache:
    """HDF5 cache of network tokens, ``/<name>/tokens`` (T, D), filled once per image.

    ``encode(name) -> (T, D)`` computes missing entries (e.g. a MASt3R encoder pass); without it
    the cache is read-only and a missing image is an error. ``key(name) -> str`` (optional) says
    what an entry must have been made from - the network, its input size, the image's content -
    and is stored as the entry's ``key`` attribute: an entry with another key is stale and is
    recomputed, so an edited image or another checkpoint never reuses old tokens. Writes go through
    :class:`H5Writer` (temporary file, atomic rename), published at its checkpoints, so an
    interrupted fill resumes from the images already published.
    """

    def __init__(self, path: str | os.PathLike, encode: Callable[[str], torch.Tensor] | None = None,
                 key: Callable[[str], str] | None = None) -> None:
        self.path = Path(path)
        self.encode = encode
        self.key = key

    def cached(self, names: Sequence[str]) -> list[str]:
        """The names among ``names`` whose entry exists and is current (its key matches)."""
        if not self.path.exists():
            return []
        with h5py.File(self.path, "r") as f:
            return [n for n in names if f"{n}/tokens" in f and self._current(f[n], n)]

    def _current(self, group: h5py.Group, name: str) -> bool:
        return self.key is None or group.attrs.get("key") == self.key(name)

    def fill(self, names: Sequence[str]) -> None:
        """Encode and store every name not cached yet (or cached with another key)."""
        current = set(self.cached(names))
        missing = [n for n in dict.fromkeys(names) if n not in current]
        if not missing:
            return
        if self.encode is None:
            raise KeyError(f"{self.path}: no tokens for {len(missing)} images (e.g. {missing[0]!r}) and no encoder")
        with H5Writer(self.path) as writer:
            for name in tqdm(missing, desc="encoding tokens"):
                tokens = self.encode(name).detach().float().cpu().numpy()
                writer.delete(name)
                group = writer.file.create_group(name)
                group.create_dataset("tokens", data=tokens)
                if self.key is not None:
                    group.attrs["key"] = self.key(name)
                writer.checkpoint()

    def tokens(self, name: str) -> torch.Tensor:
        """(T, D) float32 tokens of ``name``, encoded first if needed."""
        if not self.cached([name]):
            self.fill([name])
        with h5py.File(self.path, "r") as f:
            return torch.from_numpy(f[name]["tokens"][()].astype(np.float32))


@dataclass
class Whitening:
    """PCA whitening ``x' = (x - mean) @ projection`` in float64, output float32.

    mean: (1, D) float64; projection: (D, D') float64 (the official ``Whitener.m`` / ``.p``).
    """

    mean: torch.Tensor
    projection: torch.Tensor

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, D) -> (T, D') float32."""
        mean = self.mean.to(tokens.device)
        projection = self.projection.to(tokens.device)
        return ((tokens.double() - mean) @ projection).float()

    @classmethod
    def fit(cls, samples: torch.Tensor, shrinkage: float = 1.0) -> "Whitening":
        """PCA whitening learnt on ``samples`` (M, D) (official ``pcawhitenlearn_shrinkage``).

        Eigenvalues of the covariance are clipped at 1e-14 and raised to ``-shrinkage / 2``;
        components are ordered by decreasing eigenvalue. Eigenvector signs are arbitrary, which
        ASMK does not see (a flipped dimension flips the same bit in every residual).
        """
        x = samples.double()
        mean = x.mean(0, keepdim=True)
        centred = x - mean
        covariance = centred.T @ centred / len(x)
        eigenvalues, eigenvectors = torch.linalg.eigh((covariance + covariance.T) / 2)
        order = torch.argsort(eigenvalues, descending=True)
        scale = eigenvalues[order].clamp(min=1e-14) ** (-0.5 * shrinkage)
        return cls(mean, eigenvectors[:, order] * scale[None, :])

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "Whitening":
        """``prewhiten.m`` / ``prewhiten.p`` of an official MASt3R retrieval checkpoint.

        The file is ``{'model': {...}, 'args': argparse.Namespace}``; it is loaded with
        ``weights_only=True`` and only ``argparse.Namespace`` allow-listed.
        """
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get("model", checkpoint)
        if "prewhiten.m" not in state or "prewhiten.p" not in state:
            raise KeyError(f"{path} has no prewhiten.m / prewhiten.p (not a retrieval checkpoint with pre-whitening)")
        return cls(state["prewhiten.m"].double(), state["prewhiten.p"].double())


def select_tokens(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` tokens with the largest L2 norm, in decreasing norm (``count <= 0``: all).

    tokens: (T, D) -> (min(T, count), D). This is the official ``how_select_local`` with
    ``l2norm`` attention; apply it after whitening, as the official model does.
    """
    if count <= 0 or count >= len(tokens):
        count = len(tokens)
    return tokens[torch.topk(tokens.norm(dim=1), count).indices]


def collect_tokens(source: TokenSource, names: Sequence[str], count: int,
                   whitening: Whitening | None = None, device: torch.device | str = "cpu",
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitened, selected tokens of every image, concatenated.

    Returns descriptors (M, D') float32 and image_ids (M,) long (index into ``names``, ascending),
    on ``device``.
    """
    parts, ids = [], []
    for index, name in enumerate(tqdm(names, desc="reading tokens", disable=len(names) < 100, leave=False)):
        tokens = source.tokens(name).to(device)
        if whitening is not None:
            tokens = whitening(tokens)
        tokens = select_tokens(tokens, count)
        parts.append(tokens)
        ids.append(torch.full((len(tokens),), index, dtype=torch.long, device=device))
    return torch.cat(parts), torch.cat(ids)


def sample_tokens(source: TokenSource, names: Sequence[str], max_samples: int, seed: int) -> torch.Tensor:
    """Up to ``max_samples`` raw tokens from a seeded subset of images (for fitting a whitening).

    Images are drawn in a seeded random order until enough tokens are gathered.
    """
    order = np.random.default_rng(seed).permutation(len(names))
    parts, total = [], 0
    for index in order:
        tokens = source.tokens(names[index])
        parts.append(tokens)
        total += len(tokens)
        if total >= max_samples:
            break
    return torch.cat(parts)[:max_samples]
