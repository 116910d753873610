"""MASt3R as the pipeline's matching stage: features.h5, matches.h5 and canonical pointmaps.

MASt3R is a pair network (``kind = "pair_model"``), neither a sparse matcher nor a dense matcher
that needs quantising: its matches are already snapped to the 8-pixel anchor grid
(:mod:`matchers.mast3r.matching`), so every image's keypoints are simply all its anchors, written
once, and each pair's matches index them - the same files ``match_images_to_hloc`` writes, through
the same helpers (:func:`~matchers.mast3r.matching.anchor_keypoints`,
:func:`~matchers.mast3r.matching.hloc_matches`). recon/match/dense.py's quantiser is not used.

Every image is encoded once (:class:`~matchers.mast3r.matching.EncoderCache`); each pair is decoded
both ways. The encoder tokens are shared with the pair graph: ``pairs: mast3r_graph`` with
``tokens: mast3r`` encodes every image into ``mast3r-tokens.h5`` (:func:`encoder_token_cache`,
``/<name>/tokens`` (N, C) float32, each entry keyed by checkpoint, input size and image content),
and this stage reads those tokens back instead of encoding again when its checkpoint and size
are the same (the tokens are the encoder's float32 output, so matches are bit-identical). Besides the matches, the stage accumulates what the sparse global alignment
(:mod:`recon.align`) needs per image: its *canonical pointmap* at the anchors, the
confidence-weighted average (weights ``conf - 0.999`` as in MASt3R-SfM) of the pointmaps the
network predicts for the image in its own frame, over every pair it is in. The sums are streamed
pair by pair, so no pair's predictions are kept; they are written to ``mast3r-canonical.h5``:
per image ``points`` (K, 3) float32 (camera frame, network units), ``confidence`` (K,) float32
(summed weights; 0 = never predicted) and ``keypoints`` (K, 2) (the anchors, hloc pixels), and
the attribute ``pairs`` listing the pairs accumulated.

Resumable per pair: the canonical file records which pairs it holds, and matches.h5 and it are
published together every few seconds; a pair missing from the canonical file is (re)done. All three
files are fingerprinted with the stage options and the images' content (file bytes' hash), so an
edited image invalidates them.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from matchers.mast3r.matching import (EncoderCache, PreparedImage, anchor_keypoints, anchor_matches_from_predictions,
                                      anchor_pixels, hloc_matches, load_image, symmetric_predictions)
from ..fingerprint import content_digest, fingerprint, weights_identity
from ..graph.tokens import TokenCache
from ..io import h5
from ..io.images import ImageInfo
from . import load_model, open_resumable

logger = logging.getLogger(__name__)
CANONICAL_FILE = "mast3r-canonical.h5"
TOKENS_FILE = "mast3r-tokens.h5"
CONF_OFFSET = 0.999  # MASt3R-SfM weights pointmaps by conf - 0.999 (conf >= 1 by construction)


class CanonicalAccumulator:
    """Running confidence-weighted sums of one image's pointmaps at its anchors."""

    def __init__(self, count: int) -> None:
        self.weighted = np.zeros((count, 3))
        self.weight = np.zeros(count)

    def add(self, points: torch.Tensor, conf: torch.Tensor, anchors: torch.Tensor) -> None:
        """points (H, W, 3), conf (H, W) of one prediction; anchors (K, 2) int (x, y) pixels."""
        x, y = anchors[:, 0].to(points.device), anchors[:, 1].to(points.device)
        weight = (conf[y, x] - CONF_OFFSET).clamp(min=0).double()
        self.weighted += (weight[:, None] * points[y, x].double()).cpu().numpy()
        self.weight += weight.cpu().numpy()

    def points(self) -> np.ndarray:
        return (self.weighted / np.maximum(self.weight, 1e-12)[:, None]).astype(np.float32)


def match_mast3r(pairs: list[tuple[str, str]], infos: list[ImageInfo], image_dir: Path, conf: dict[str, Any],
                 output_dir: Path, device: torch.device) -> int:
    """Match ``pairs`` with MASt3R into ``output_dir`` (features.h5, matches.h5, mast3r-canonical.h5);
    return how many pairs were computed (0 when everything was up to date)."""
    names = sorted({n for pair in pairs for n in pair})
    digests = {n: content_digest(image_dir / n) for n in names}
    stamp = fingerprint("mast3r", conf, sorted(digests.items()))
    canonical_path = output_dir / CANONICAL_FILE
    features_path, matches_path = output_dir / "features.h5", output_dir / "matches.h5"
    done = _done_pairs(canonical_path, stamp) if h5.read_stamp(matches_path) == h5.read_stamp(features_path) == stamp else set()
    todo = [p for p in pairs if h5.names_to_pair(*p) not in done]
    if not todo:
        return 0
    if not done:
        for path in (features_path, matches_path, canonical_path):
            path.unlink(missing_ok=True)
    images = {n: load_image(image_dir / n, size=conf["size"]) for n in tqdm(names, desc="MASt3R images", leave=False)}
    _check_sizes(images, {info.name: (info.width, info.height) for info in infos})
    subsample = conf["subsample"]
    with open_resumable(features_path, stamp) as writer:
        for name, image in images.items():
            if name not in writer:
                h5.write_features(writer, name, anchor_keypoints(image, subsample), None, None, image.original_size)
    accumulators = _read_accumulators(canonical_path, images, subsample)
    model = load_model({"name": conf["name"], "weights": conf["weights"]}, device)
    cache = EncoderCache(model)
    needed = list(dict.fromkeys(n for p in todo for n in p))
    tokens = TokenCache(output_dir / TOKENS_FILE, key=lambda n: encoder_key(conf["weights"], conf["size"], digests[n]))
    reused = tokens.cached(needed)
    for name in reused:
        cache.add(name, tokens.tokens(name), images[name].size)
    if reused:
        logger.info("MASt3R: encoder tokens of %d of %d images read from %s", len(reused), len(needed), TOKENS_FILE)
    cache.encode_all({n: images[n] for n in needed}, conf["encoder_batch"])
    anchors = {n: anchor_pixels(image.size, subsample) for n, image in images.items()}
    with open_resumable(matches_path, stamp) as writer:
        for name0, name1 in tqdm(todo, desc="MASt3R matching", unit="pair"):
            res = symmetric_predictions(model, cache(name0, images[name0]), cache(name1, images[name1]))
            matches = anchor_matches_from_predictions(res, subsample, conf["min_conf"])
            h5.write_matches(writer, name0, name1, *hloc_matches(matches, images[name0].size, subsample))
            accumulators[name0].add(res[0]["pts3d"][0], res[0]["conf"][0], anchors[name0])
            accumulators[name1].add(res[2]["pts3d"][0], res[2]["conf"][0], anchors[name1])
            done.add(h5.names_to_pair(name0, name1))
            if writer.checkpoint():
                _write_canonical(canonical_path, stamp, accumulators, images, subsample, done)
    _write_canonical(canonical_path, stamp, accumulators, images, subsample, done)
    return len(todo)


def encoder_key(weights: str, size: int, digest: str) -> str:
    """What one image's cached encoder tokens were made from: checkpoint, input size, image bytes."""
    return fingerprint("mast3r-encoder", weights_identity(weights), int(size), digest)


def encoder_token_cache(image_dir: Path, output_dir: Path, weights: str, size: int,
                        device: torch.device) -> TokenCache:
    """The run's MASt3R encoder-token cache (``mast3r-tokens.h5``), filled on demand.

    Missing images are prepared as the matcher prepares them (:func:`load_image` at ``size``) and
    encoded one at a time; the network is loaded only if some image is missing. Tokens (N, C) are
    the encoder output after ``enc_norm``: what MASt3R's decoder and its retrieval both read.
    """
    model = None

    @functools.cache
    def key(name: str) -> str:
        return encoder_key(weights, size, content_digest(image_dir / name))

    @torch.no_grad()
    def encode(name: str) -> torch.Tensor:
        nonlocal model
        if model is None:
            model = load_model({"name": "mast3r", "weights": weights}, device)
        return model.encode(load_image(image_dir / name, size=size).img.to(device)).feat[0]

    return TokenCache(output_dir / TOKENS_FILE, encode, key)


def _check_sizes(images: dict[str, PreparedImage], sizes: dict[str, tuple[int, int]]) -> None:
    """MASt3R's loader and recon's must agree on each image's (EXIF-oriented) size."""
    wrong = [n for n, image in images.items() if tuple(image.original_size) != tuple(sizes[n])]
    if wrong:
        raise ValueError(f"MASt3R read other image sizes than recon for {wrong[:5]}")


def _done_pairs(path: Path, stamp: str) -> set[str]:
    if h5.read_stamp(path) != stamp:
        return set()
    with h5py.File(path, "r") as f:
        return set(str(p) for p in f.attrs.get("pairs", []))


def _read_accumulators(path: Path, images: dict[str, PreparedImage], subsample: int) -> dict[str, CanonicalAccumulator]:
    """Accumulators restored from a partial canonical file (resume), else empty."""
    accumulators = {n: CanonicalAccumulator(len(anchor_pixels(image.size, subsample))) for n, image in images.items()}
    if path.exists():
        with h5py.File(path, "r") as f:
            for name, acc in accumulators.items():
                if name in f:
                    acc.weight = f[name]["confidence"][()].astype(np.float64)
                    acc.weighted = f[name]["points"][()].astype(np.float64) * acc.weight[:, None]
    return accumulators


def _write_canonical(path: Path, stamp: str, accumulators: dict[str, CanonicalAccumulator],
                     images: dict[str, PreparedImage], subsample: int, done: set[str]) -> None:
    """Rewrite the canonical file atomically (it is small: 16 bytes per anchor)."""
    with h5.H5Writer(path, fresh=True) as writer:
        writer.file.attrs["recon_fingerprint"] = stamp
        writer.file.attrs["pairs"] = sorted(done)
        for name, acc in accumulators.items():
            group = writer.file.create_group(name)
            group.create_dataset("points", data=acc.points())
            group.create_dataset("confidence", data=acc.weight.astype(np.float32))
            group.create_dataset("keypoints", data=anchor_keypoints(images[name], subsample).astype(np.float32))


def read_canonical(path: Path, name: str) -> dict[str, np.ndarray]:
    """One image's canonical pointmap: ``points`` (K, 3), ``confidence`` (K,), ``keypoints`` (K, 2)."""
    with h5py.File(path, "r") as f:
        if name not in f:
            raise KeyError(f"no canonical pointmap for '{name}' in {path}")
        return {key: f[name][key][()] for key in ("points", "confidence", "keypoints")}
