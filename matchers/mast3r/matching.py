"""MASt3R matching for SfM: preprocessing, one encoder pass per image, symmetric decoding,
reciprocal matching, and keypoints anchored on the 8-pixel grid.

Why anchors: MASt3R matches are dense pixels that differ from pair to pair, so the same 3D point
seen in three images would get three unrelated keypoints and no track. Every match is therefore
snapped to its ``subsample`` x ``subsample`` block (the official MASt3R-SfM block quantisation,
``(y // S) * (W / S) + x // S``) and each block contributes one keypoint, placed at the block's
anchor pixel ``(S/2 + kS)`` - the fast-NN seed and the sparse alignment's depth anchor. Keypoint
ids are fixed per image before any pair is matched, so features can be written once and matches
streamed pair by pair; tracks form wherever two pairs hit the same block. Within a pair, matches
are made one-to-one between blocks, keeping the most confident.

Preprocessing follows the official ``load_images``: EXIF orientation applied, long side resized to
``size`` (LANCZOS when shrinking, BICUBIC otherwise; sides rounded), centre crop to multiples of the
patch size, square images cropped to 4:3 (unless ``square_ok``), portrait images kept portrait,
pixels normalised to [-1, 1]. :meth:`PreparedImage.to_original` maps processed pixels back to the
original image (hloc convention: centre of the top-left pixel at (0, 0)).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from tqdm import tqdm

from ..backbones.croco import patch_positions
from .fast_nn import BLOCK_SIZE, correspondences_nonsym, correspondences_symmetric
from .model import AsymmetricMASt3R, Encoding

Prediction = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PreparedImage:
    """An image as the network sees it, and how to map its pixels back to the original.

    ``img`` (1, 3, H, W) float32 in [-1, 1]; ``original_size`` / ``resized_size`` (width, height);
    ``crop_offset`` (x0, y0) of the crop in the resized image.
    """

    img: torch.Tensor
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_offset: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the network input."""
        return int(self.img.shape[-2]), int(self.img.shape[-1])

    @property
    def true_shape(self) -> torch.Tensor:
        """(1, 2) int32 (H, W), the official views' ``true_shape``."""
        return torch.tensor([self.size], dtype=torch.int32)

    def to_original(self, xy: torch.Tensor) -> torch.Tensor:
        """(N, 2) processed-image pixels (x, y) -> (N, 2) float64 original-image pixels.

        Pixel centres are at integer coordinates in both images (hloc convention); the resize
        maps pixel edges to pixel edges, hence the half-pixel terms.
        """
        scale = torch.tensor([self.original_size[0] / self.resized_size[0],
                              self.original_size[1] / self.resized_size[1]], dtype=torch.float64)
        offset = torch.tensor(self.crop_offset, dtype=torch.float64)
        return (xy.to(torch.float64).cpu() + offset + 0.5) * scale - 0.5


def prepare_image(image: PIL.Image.Image, size: int = 512, patch_size: int = 16,
                  square_ok: bool = False) -> PreparedImage:
    """Resize and crop an RGB PIL image for MASt3R (see the module docstring)."""
    image = image.convert("RGB")
    W0, H0 = image.size
    long_side = max(W0, H0)
    resample = PIL.Image.LANCZOS if long_side > size else PIL.Image.BICUBIC
    resized = image.resize(tuple(int(round(v * size / long_side)) for v in (W0, H0)), resample)
    W, H = resized.size
    cx, cy = W // 2, H // 2
    half = patch_size // 2
    halfw, halfh = (cx // half) * half, (cy // half) * half
    if not square_ok and W == H:
        # official 4:3 crop of square images, kept a multiple of the patch size
        halfh = (3 * halfw // 4) // half * half
    if halfw == 0 or halfh == 0:
        raise ValueError(f"image of {W0}x{H0} pixels is too small for size={size}, patch={patch_size}")
    x0, y0 = cx - halfw, cy - halfh
    crop = np.asarray(resized.crop((x0, y0, cx + halfw, cy + halfh)))
    img = torch.from_numpy(crop.copy()).permute(2, 0, 1).float().div(255)
    img = (img - 0.5) / 0.5
    return PreparedImage(img[None], (W0, H0), (W, H), (x0, y0))


def load_image(path: str | os.PathLike, size: int = 512, patch_size: int = 16, square_ok: bool = False) -> PreparedImage:
    """Read an image file (EXIF orientation applied, as the official loader) and prepare it."""
    with PIL.Image.open(path) as image:
        return prepare_image(PIL.ImageOps.exif_transpose(image), size, patch_size, square_ok)


class EncoderCache:
    """Encoder tokens per image, computed once and reused by every pair and by the retrieval graph.

    The reference code re-encodes both images of every pair; here an image is encoded the first
    time it is asked for (``encoded`` counts encoder passes). ``store_device`` keeps the cached
    tokens elsewhere than the model (e.g. CPU RAM for thousands of images: 3 MB per 512x384 image
    for ViT-L). Keys are image names, which identify images within one run.
    """

    def __init__(self, model: AsymmetricMASt3R, store_device: torch.device | str | None = None) -> None:
        self.model = model
        self.store_device = store_device
        self.cache: dict[str, Encoding] = {}
        self.encoded = 0

    @torch.no_grad()
    def encode_all(self, images: dict[str, PreparedImage], batch_size: int = 4) -> None:
        """Encode every not-yet-cached image, batching images of equal size."""
        todo = [name for name in images if name not in self.cache]
        by_size: dict[tuple[int, int], list[str]] = {}
        for name in todo:
            by_size.setdefault(images[name].size, []).append(name)
        with tqdm(total=len(todo), desc="MASt3R encoder", disable=not todo) as progress:
            for names in by_size.values():
                for i in range(0, len(names), batch_size):
                    chunk = names[i:i + batch_size]
                    enc = self.model.encode(torch.cat([images[n].img for n in chunk]).to(self.model.device))
                    for j, name in enumerate(chunk):
                        self.cache[name] = self._store(Encoding(enc.feat[j:j + 1], enc.pos[j:j + 1], enc.image_size))
                    self.encoded += len(chunk)
                    progress.update(len(chunk))

    def add(self, name: str, tokens: torch.Tensor, image_size: tuple[int, int]) -> None:
        """Cache tokens (N, C) encoded elsewhere (e.g. read back from the run's token file) for an
        image of network size ``image_size`` (H, W); N must be the image's patch count."""
        rows, cols = image_size[0] // self.model.patch_size, image_size[1] // self.model.patch_size
        if tuple(tokens.shape) != (rows * cols, self.model.enc_embed_dim):
            raise ValueError(f"{name}: cached tokens {tuple(tokens.shape)} do not fit a {image_size} image "
                             f"({rows * cols} patches of {self.model.enc_embed_dim} channels)")
        device = self.store_device or self.model.device
        self.cache[name] = Encoding(tokens[None].to(device), patch_positions(1, rows, cols, device), tuple(image_size))

    def _store(self, enc: Encoding) -> Encoding:
        return enc.to(self.store_device) if self.store_device is not None else enc

    def __call__(self, name: str, image: PreparedImage) -> Encoding:
        """The encoding of ``image`` (computed on first use), on the model's device."""
        if name not in self.cache:
            self.encode_all({name: image}, batch_size=1)
        return self.cache[name].to(self.model.device)


@torch.no_grad()
def symmetric_predictions(model: AsymmetricMASt3R, enc0: Encoding, enc1: Encoding) -> tuple[Prediction, Prediction, Prediction, Prediction]:
    """Both decoder passes of a pair from cached encodings: (res00, res10, res11, res01).

    ``res00``/``res10``: images 0 and 1 with image 0 as reference; ``res11``/``res01``: with image 1
    as reference (official ``symmetric_inference`` order and semantics).
    """
    res00, res10 = model.decode_pair(enc0, enc1)
    res11, res01 = model.decode_pair(enc1, enc0)
    return res00, res10, res11, res01


class AnchorMatches(NamedTuple):
    """One-to-one matches between anchor keypoints: ids (M,) int64 into each image's anchors, scores (M,)."""

    ids0: torch.Tensor
    ids1: torch.Tensor
    scores: torch.Tensor


def anchor_ids(xy: torch.Tensor, size: tuple[int, int], subsample: int) -> torch.Tensor:
    """(M, 2) int pixels (x, y) of an (H, W) image -> (M,) id of their ``subsample`` block."""
    cols = size[1] // subsample
    return torch.div(xy[:, 1], subsample, rounding_mode="floor") * cols + torch.div(xy[:, 0], subsample, rounding_mode="floor")


def anchor_pixels(size: tuple[int, int], subsample: int) -> torch.Tensor:
    """Anchor pixel (x, y) of every block of an (H, W) image, in id order: (K, 2) int64."""
    y = torch.arange(size[0] // subsample) * subsample + subsample // 2
    x = torch.arange(size[1] // subsample) * subsample + subsample // 2
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1)


def anchor_keypoints(image: PreparedImage, subsample: int = 8) -> np.ndarray:
    """(K, 2) float64 original-image pixels (hloc convention) of ``image``'s anchors, in id order:
    the keypoints an image gets in features.h5."""
    return image.to_original(anchor_pixels(image.size, subsample)).numpy()


def hloc_matches(matches: AnchorMatches, size0: tuple[int, int], subsample: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Anchor matches -> hloc ``matches0`` (K0,) int32 (-1 = none) and ``matching_scores0`` (K0,)
    float32, indexed by the anchors of image 0 (of network size ``size0`` = (H, W))."""
    count = (size0[0] // subsample) * (size0[1] // subsample)
    matches0 = np.full(count, -1, np.int32)
    scores0 = np.zeros(count, np.float32)
    ids0 = matches.ids0.cpu().numpy()
    matches0[ids0] = matches.ids1.cpu().numpy()
    scores0[ids0] = matches.scores.cpu().numpy()
    return matches0, scores0


def _best_per_key(keys: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Indices of the highest-score entry for each distinct key (ties: lowest index)."""
    order = torch.argsort(-scores, stable=True)
    sorted_keys = keys[order]
    idx = torch.argsort(sorted_keys, stable=True)
    first = torch.ones_like(idx, dtype=torch.bool)
    first[1:] = sorted_keys[idx[1:]] != sorted_keys[idx[:-1]]
    return order[idx[first]]


def snap_to_anchors(xy0: torch.Tensor, xy1: torch.Tensor, scores: torch.Tensor, size0: tuple[int, int],
                    size1: tuple[int, int], subsample: int = 8) -> AnchorMatches:
    """Pixel matches -> one-to-one anchor matches, most confident first, sorted by ids0."""
    ids0, ids1 = anchor_ids(xy0, size0, subsample), anchor_ids(xy1, size1, subsample)
    keep = _best_per_key(ids0, scores)
    ids0, ids1, scores = ids0[keep], ids1[keep], scores[keep]
    keep = _best_per_key(ids1, scores)
    keep = keep[torch.argsort(ids0[keep])]
    return AnchorMatches(ids0[keep], ids1[keep], scores[keep])


def anchor_matches_from_predictions(res: tuple[Prediction, Prediction, Prediction, Prediction], subsample: int = 8,
                                    min_conf: float = 0.0, block_size: int = BLOCK_SIZE) -> AnchorMatches:
    """Grid-anchored matches from :func:`symmetric_predictions`' four outputs (batch item 0):
    all four matching directions merged (MASt3R-SfM), confidence sqrt(q0 q1) of the descriptor
    confidences, matches below ``min_conf`` dropped, then snapped to anchors."""
    xy0, xy1, conf = correspondences_symmetric(tuple(r["desc"][0] for r in res), tuple(r["desc_conf"][0] for r in res),
                                               subsample=subsample, block_size=block_size)
    keep = conf >= min_conf
    size0, size1 = tuple(res[0]["desc"].shape[1:3]), tuple(res[2]["desc"].shape[1:3])
    return snap_to_anchors(xy0[keep], xy1[keep], conf[keep], size0, size1, subsample)


def match_pair(model: AsymmetricMASt3R, enc0: Encoding, enc1: Encoding, subsample: int = 8,
               symmetric: bool = True, min_conf: float = 0.0, block_size: int = BLOCK_SIZE) -> AnchorMatches:
    """Grid-anchored matches of one pair from cached encodings.

    ``symmetric``: decode the pair both ways and merge all four matching directions (MASt3R-SfM);
    otherwise one decoder pass (the official COLMAP export). Match confidence: sqrt(q0 q1)
    (symmetric) or min(q0, q1) of the descriptor confidences; matches below ``min_conf`` are dropped.
    """
    if symmetric:
        return anchor_matches_from_predictions(symmetric_predictions(model, enc0, enc1), subsample, min_conf, block_size)
    with torch.no_grad():
        pred0, pred1 = model.decode_pair(enc0, enc1)
    xy0, xy1, conf = correspondences_nonsym(pred0["desc"][0], pred1["desc"][0], pred0["desc_conf"][0],
                                            pred1["desc_conf"][0], subsample=subsample, block_size=block_size)
    keep = conf >= min_conf
    return snap_to_anchors(xy0[keep], xy1[keep], conf[keep], enc0.image_size, enc1.image_size, subsample)


def match_images_to_hloc(model: AsymmetricMASt3R, image_dir: str | os.PathLike, pairs: Iterable[tuple[str, str]],
                         features_path: str | os.PathLike, matches_path: str | os.PathLike, size: int = 512,
                         subsample: int = 8, symmetric: bool = True, min_conf: float = 0.0,
                         cache: EncoderCache | None = None) -> EncoderCache:
    """Match ``pairs`` of images under ``image_dir`` and write hloc ``features.h5`` / ``matches.h5``.

    Keypoints of an image are all its anchors, in original-image pixels (hloc convention); each
    pair's ``matches0`` indexes them. Pairs already in ``matches_path`` are skipped (resume). Every
    image is encoded once; the returned cache holds the tokens for the retrieval graph to reuse.
    """
    from recon.io.h5 import H5Writer, has_pair, write_features, write_matches

    pairs = list(dict.fromkeys((a, b) for a, b in pairs if a != b))
    names = list(dict.fromkeys(n for pair in pairs for n in pair))
    images = {n: load_image(Path(image_dir) / n, size=size) for n in names}
    cache = cache or EncoderCache(model)
    with H5Writer(features_path) as writer:
        for name, image in images.items():
            write_features(writer, name, anchor_keypoints(image, subsample), None, None, image.original_size)
    with H5Writer(matches_path) as writer:
        todo = [p for p in pairs if not has_pair(writer.file, *p)]
        cache.encode_all({n: images[n] for n in dict.fromkeys(n for p in todo for n in p)})
        for name0, name1 in tqdm(todo, desc="MASt3R matching"):
            m = match_pair(model, cache(name0, images[name0]), cache(name1, images[name1]), subsample,
                           symmetric, min_conf)
            write_matches(writer, name0, name1, *hloc_matches(m, images[name0].size, subsample))
    return cache
