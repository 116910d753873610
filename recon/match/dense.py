"""Dense matches (RoMa, DKM, MASt3R, ...) turned into keypoints and matches that form tracks.

A dense matcher returns, per pair, matched positions anywhere in the images; nothing repeats
across pairs, so COLMAP could build no track longer than two views. We quantise: every matched
position falls in a cell of a ``cell_size`` pixel grid in ORIGINAL image pixels, each touched cell
of an image becomes one keypoint (at the mean of the positions that fell in it), and a pair's
matches become matches between cells - so the same cell seen from several pairs is one keypoint
and tracks form.

Memory stays bounded as the number of pairs grows. Pass 1 streams each pair's quantised matches to
``dense-matches.h5`` as soon as the pair is done (resumable per pair). Pass 2 reads them back
image by image (summing positions per touched cell into the image's keypoints), then pair by
pair (each pair's matches in hloc's format against the final keypoint indices), holding one
image's cells and a small cache at a time: memory does not grow with the number of pairs or
images. ``features.h5`` and ``matches.h5`` are
rewritten from ``dense-matches.h5`` whenever it changed.

With ``at_keypoints: true`` the dense matcher instead matches the keypoints of an extractor's
``features.h5`` (SIFT, SuperPoint, ...) through its warp, as RoMa's ``match_keypoints`` does
(:func:`match_dense_keypoints`): no quantisation, the extractor's keypoints form the tracks, and
``matches.h5`` is written like a sparse matcher's (resumable per pair).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..fingerprint import fingerprint
from ..io import h5
from ..io.images import ImageInfo, read_image, resize_max
from . import FeatureCache, load_model, open_resumable, rescale_keypoints

RAW_FILE = "dense-matches.h5"


def quantize(keypoints: np.ndarray, cell_size: float, width: int, height: int) -> np.ndarray:
    """Cell index of each (x, y) in hloc pixel coordinates ((0, 0) = centre of the top-left
    pixel); cells are ``cell_size`` pixels wide, numbered row by row; -1 outside the image."""
    shifted = keypoints + 0.5  # image area is [0, width) x [0, height)
    columns = int(np.ceil(width / cell_size))
    ix = np.floor(shifted[:, 0] / cell_size).astype(np.int64)
    iy = np.floor(shifted[:, 1] / cell_size).astype(np.int64)
    inside = (shifted[:, 0] >= 0) & (shifted[:, 1] >= 0) & (shifted[:, 0] < width) & (shifted[:, 1] < height)
    return np.where(inside, iy * columns + ix, -1)


def one_to_one(cells0: np.ndarray, cells1: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of matches to keep so no cell of either image is matched twice (best score wins)."""
    order = np.argsort(-scores, kind="stable")
    _, first0 = np.unique(cells0[order], return_index=True)
    kept = order[np.sort(first0)]
    _, first1 = np.unique(cells1[kept], return_index=True)
    return np.sort(kept[first1])


def sample_matches(scores: np.ndarray, max_matches: int, min_score: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``max_matches`` matches scoring >= ``min_score``, drawn with probability
    proportional to score (RoMa-style balanced sampling keeps confident regions from crowding out
    the rest); seeded."""
    candidates = np.flatnonzero(scores >= min_score)
    if len(candidates) <= max_matches:
        return candidates
    weights = scores[candidates].astype(np.float64)
    weights = weights / weights.sum() if weights.sum() > 0 else None
    return np.sort(rng.choice(candidates, max_matches, replace=False, p=weights))


@dataclass
class CellAccumulator:
    """Per image: every touched cell with the summed positions and count of what fell in it."""

    cells: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, cells: np.ndarray, positions: np.ndarray) -> None:
        all_cells = np.concatenate([self.cells, cells])
        unique, inverse = np.unique(all_cells, return_inverse=True)
        stacked = np.concatenate([self.sums, positions])
        sums = np.stack([np.bincount(inverse, weights=stacked[:, k], minlength=len(unique)) for k in (0, 1)], 1)
        counts = np.bincount(inverse, weights=np.concatenate([self.counts, np.ones(len(cells))]),
                             minlength=len(unique)).astype(np.int64)
        self.cells, self.sums, self.counts = unique, sums, counts

    def keypoints(self) -> np.ndarray:
        return (self.sums / self.counts[:, None]).astype(np.float32)


def match_dense(pairs: list[tuple[str, str]], infos: list[ImageInfo], image_dir: Path, conf: dict[str, Any],
                output_dir: Path, device: torch.device, seed: int = 0) -> int:
    """Run a dense matcher over ``pairs`` and write features.h5 + matches.h5; return pairs matched."""
    sizes = {info.name: (info.width, info.height) for info in infos}
    raw_path = output_dir / RAW_FILE
    computed = run_dense_pairs(pairs, sizes, image_dir, conf, raw_path, device, seed)
    stamp = fingerprint("dense-tracks", conf, seed, pairs)  # what dense-matches.h5 holds, too
    features_path, matches_path = output_dir / "features.h5", output_dir / "matches.h5"
    if h5.read_stamp(features_path) == stamp and h5.read_stamp(matches_path) == stamp:
        return computed
    for path in (features_path, matches_path):
        path.unlink(missing_ok=True)
    write_tracks(pairs, sizes, raw_path, features_path, matches_path, stamp)
    return computed


def run_dense_pairs(pairs: list[tuple[str, str]], sizes: dict[str, tuple[int, int]], image_dir: Path,
                    conf: dict[str, Any], raw_path: Path, device: torch.device, seed: int) -> int:
    """Pass 1: match each pair not yet in ``raw_path``, quantise, and store it there."""
    with open_resumable(raw_path, fingerprint("dense-raw", conf, seed)) as writer:
        todo = [(a, b) for a, b in pairs if h5.names_to_pair(a, b) not in writer]
        if not todo:
            return 0
        model = load_model(conf, device)
        cache: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
        for name0, name1 in tqdm(todo, desc="dense matches", unit="pair"):
            rng = np.random.default_rng([seed, int(fingerprint(name0, name1), 16)])
            (image0, scale0), (image1, scale1) = (_load(cache, image_dir, n, conf["resize_max"], device)
                                                  for n in (name0, name1))
            with torch.inference_mode():
                pred = model({"image0": image0, "image1": image1, "name0": name0, "name1": name1})
            kp0 = rescale_keypoints(pred["keypoints0"].cpu().numpy().reshape(-1, 2), scale0)
            kp1 = rescale_keypoints(pred["keypoints1"].cpu().numpy().reshape(-1, 2), scale1)
            scores = pred["scores"].cpu().numpy().reshape(-1).astype(np.float32)
            keep = sample_matches(scores, conf["max_matches"], conf["min_score"], rng)
            write_raw_pair(writer, name0, name1, kp0[keep], kp1[keep], scores[keep], conf["cell_size"],
                           sizes[name0], sizes[name1])
            writer.checkpoint()
    return len(todo)


def match_dense_keypoints(pairs: list[tuple[str, str]], image_dir: Path, features_path: Path, conf: dict[str, Any],
                          matches_path: Path, device: torch.device) -> int:
    """Match the keypoints of ``features_path`` pair by pair through the dense matcher's warp and
    write ``matches_path`` in hloc's format; return how many pairs were matched (the rest were
    already there)."""
    stamp = fingerprint("dense-keypoint-matches", conf, h5.read_stamp(features_path))
    with open_resumable(matches_path, stamp) as writer:
        todo = [(a, b) for a, b in pairs if not h5.has_pair(writer.file, a, b)]
        if not todo:
            return 0
        model = load_model(conf, device)
        images: dict = {}
        features = FeatureCache([features_path], device)
        try:
            for name0, name1 in tqdm(todo, desc="dense matches at keypoints", unit="pair"):
                (image0, scale0), (image1, scale1) = (_load(images, image_dir, n, conf["resize_max"], device)
                                                      for n in (name0, name1))
                keypoints = [rescale_keypoints(features[n]["keypoints"].cpu().numpy(), 1.0 / s)
                             for n, s in ((name0, scale0), (name1, scale1))]  # into the resized inputs
                with torch.inference_mode():
                    matches0, scores0 = model.match_keypoints(
                        {"image0": image0, "image1": image1, "name0": name0, "name1": name1,
                         "keypoints0": torch.from_numpy(keypoints[0]).to(device),
                         "keypoints1": torch.from_numpy(keypoints[1]).to(device)},
                        conf["keypoint_max_distance"], conf["keypoint_min_certainty"])
                h5.write_matches(writer, name0, name1, matches0.cpu().numpy(), scores0.cpu().numpy())
                writer.checkpoint()
        finally:
            features.close()
    return len(todo)


def _load(cache: dict, image_dir: Path, name: str, max_size: int, device: torch.device):
    """RGB tensor (1, 3, H, W) in [0, 1] and its per-axis scale to original pixels; the last few
    images stay cached because consecutive pairs share images."""
    if name not in cache:
        image, scale = resize_max(read_image(image_dir / name), max_size)
        tensor = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float().div_(255.0)
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        cache[name] = (tensor, scale)
    return cache[name]


def write_raw_pair(writer: h5.H5Writer, name0: str, name1: str, kp0: np.ndarray, kp1: np.ndarray,
                   scores: np.ndarray, cell_size: float, size0: tuple[int, int], size1: tuple[int, int]) -> None:
    """Quantise one pair and store cells, exact positions and scores of its one-to-one matches."""
    cells0, cells1 = quantize(kp0, cell_size, *size0), quantize(kp1, cell_size, *size1)
    valid = (cells0 >= 0) & (cells1 >= 0)
    kept = np.flatnonzero(valid)[one_to_one(cells0[valid], cells1[valid], scores[valid])]
    key = h5.names_to_pair(name0, name1)
    writer.delete(key)
    group = writer.file.create_group(key)
    group.create_dataset("cells0", data=cells0[kept])
    group.create_dataset("cells1", data=cells1[kept])
    group.create_dataset("keypoints0", data=kp0[kept].astype(np.float32))
    group.create_dataset("keypoints1", data=kp1[kept].astype(np.float32))
    group.create_dataset("scores", data=scores[kept])


def write_tracks(pairs: list[tuple[str, str]], sizes: dict[str, tuple[int, int]], raw_path: Path,
                 features_path: Path, matches_path: Path, stamp: str, cache_images: int = 16) -> None:
    """Pass 2: one keypoint per touched cell per image, then every pair's matches against them.

    Image by image: an image's cells are gathered from the pairs it is in, averaged into its
    keypoints (``features.h5``) and its sorted cell ids set aside in a scratch file; then pair by
    pair, each side's cells are looked up in its image's ids (the last ``cache_images`` kept). Memory
    is one image's cells plus that cache - independent of the number of pairs and of images.
    """
    sides: dict[str, list[tuple[str, int]]] = {name: [] for name in sizes}
    for name0, name1 in pairs:
        key = h5.names_to_pair(name0, name1)
        sides[name0].append((key, 0))
        sides[name1].append((key, 1))
    cells_path = raw_path.with_name(raw_path.name + ".cells")
    try:
        with h5py.File(raw_path, "r") as raw:
            with h5.H5Writer(features_path) as writer, h5py.File(cells_path, "w") as cells_file:
                writer.file.attrs["recon_fingerprint"] = stamp
                for name, members in tqdm(sides.items(), desc="dense keypoints", unit="img", leave=False):
                    accumulator = CellAccumulator()
                    for key, side in members:
                        accumulator.add(raw[key][f"cells{side}"][()], raw[key][f"keypoints{side}"][()])
                    h5.write_features(writer, name, accumulator.keypoints(), None,
                                      accumulator.counts.astype(np.float32), sizes[name])
                    cells_file.create_dataset(name, data=accumulator.cells)
            with h5.H5Writer(matches_path) as writer, h5py.File(cells_path, "r") as cells_file:
                writer.file.attrs["recon_fingerprint"] = stamp
                image_cells: OrderedDict[str, np.ndarray] = OrderedDict()

                def cells_of(name: str) -> np.ndarray:
                    if name not in image_cells:
                        image_cells[name] = cells_file[name][()]
                        if len(image_cells) > cache_images:
                            image_cells.popitem(last=False)
                    image_cells.move_to_end(name)
                    return image_cells[name]

                for name0, name1 in tqdm(pairs, desc="dense tracks", unit="pair", leave=False):
                    group = raw[h5.names_to_pair(name0, name1)]
                    cells0, cells1 = cells_of(name0), cells_of(name1)
                    matches0 = np.full(len(cells0), -1, np.int64)
                    scores0 = np.zeros(len(cells0), np.float32)
                    index0 = np.searchsorted(cells0, group["cells0"][()])
                    matches0[index0] = np.searchsorted(cells1, group["cells1"][()])
                    scores0[index0] = group["scores"][()]
                    h5.write_matches(writer, name0, name1, matches0, scores0)
    finally:
        cells_path.unlink(missing_ok=True)
