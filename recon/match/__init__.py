"""Running extractors and matchers over images and pairs, into hloc's files, resumably.

``extract_features`` writes ``features.h5`` (one group per image) and ``match_pairs`` writes
``matches.h5`` (one group per pair). Both skip entries already in their file when the file was
made with the same configuration (its fingerprint attribute), publish progress atomically every
few seconds, and so resume after a kill without redoing finished images or pairs.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import torch
from tqdm import tqdm

import matchers
from ..fingerprint import fingerprint
from ..heap import reuse_freed_memory
from ..io import h5
from ..io.images import read_image, resize_max
from .orientation import (VOTE_KEYPOINTS, VOTE_SIZE, anchor_labels, candidate_turns, choose_rotations,
                          rotate_image, unrotate_keypoints)

logger = logging.getLogger(__name__)
STAGE_OPTIONS = ("name", "resize_max", "rotations", "weights", "batch_size", "max_matches", "min_score", "cell_size",
                 "at_keypoints", "keypoint_max_distance", "keypoint_min_certainty")


def model_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """A stage's options minus the pipeline's own (what the model's constructor takes)."""
    return {k: v for k, v in conf.items() if k not in STAGE_OPTIONS}


def load_model(conf: dict[str, Any], device: torch.device) -> matchers.BaseModel:
    """Build the stage's model; ``weights: official`` means none for classical models (SIFT, NN)."""
    weights = conf.get("weights") or None
    if weights == "official" and not matchers.has_official_weights(conf["name"]):
        weights = None
    return matchers.load(conf["name"], weights=weights, device=device, **model_conf(conf))


def open_resumable(path: Path, stamp: str) -> h5.H5Writer:
    """Open ``path`` for appending if it was made with fingerprint ``stamp``, else start afresh."""
    if path.exists() and h5.read_stamp(path) != stamp:
        logger.info("%s was made with another configuration: recomputing it", path.name)
        path.unlink()
    writer = h5.H5Writer(path)
    writer.file.attrs["recon_fingerprint"] = stamp
    return writer


def rescale_keypoints(keypoints: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """hloc's rescaling of keypoints (N, 2) between two sizes of one image: ``(kp + 0.5) * scale - 0.5``
    with ``scale`` (2,) = target size / source size per axis (e.g. original / resized to bring
    keypoints found on a resized image back; its inverse goes the other way)."""
    return (keypoints + 0.5) * scale[None] - 0.5


def extract_features(image_dir: Path, names: list[str], conf: dict[str, Any], features_path: Path,
                     device: torch.device) -> int:
    """Extract local features for every image not yet in ``features_path``; return how many.

    With ``conf["rotations"] > 1`` each new image is extracted at the in-plane rotation that gives
    all images a common orientation (:mod:`recon.match.orientation`; the candidates that vote on it
    are cached beside ``features_path``); images already extracted are never extracted again.
    """
    stamp = fingerprint("features", conf)
    with open_resumable(features_path, stamp) as writer:
        todo = [name for name in names if name not in writer]
        if not todo:
            return 0
        model = load_model(conf, device)
        grayscale = getattr(model, "grayscale", False)
        turns = (common_orientation(model, image_dir, names, conf, features_path, writer, device)
                 if conf.get("rotations", 1) > 1 else {})
        uncertainty = getattr(model, "detection_noise", 1.0)
        loader = _prefetch(image_dir, todo, grayscale, conf["resize_max"])
        for name, image, scale, size in tqdm(loader, total=len(todo), desc="features", unit="img"):
            pred = _predict(model, image, scale, turns.get(name, 0), (image.shape[1], image.shape[0]), device)
            _write(writer, name, pred, size, uncertainty * float(scale.mean()), turns.get(name, 0))
            writer.checkpoint()
    return len(todo)


def common_orientation(model: matchers.BaseModel, image_dir: Path, names: list[str], conf: dict[str, Any],
                       features_path: Path, written: h5.H5Writer, device: torch.device) -> dict[str, int]:
    """Quarter turns (counter-clockwise) per image that bring ``names`` to one common orientation,
    images in ``written`` keeping the rotation they were extracted at.

    Each image's candidates (its strongest :data:`VOTE_KEYPOINTS` descriptors at every rotation,
    extracted at :data:`VOTE_SIZE`) are cached in ``features-orientation.h5`` beside
    ``features_path``, so only images new to the cache are extracted here.
    """
    turns = candidate_turns(conf["rotations"])
    size = min(conf["resize_max"], VOTE_SIZE)
    votes_path = features_path.with_name(features_path.stem + "-orientation.h5")
    with open_resumable(votes_path, fingerprint("orientation", conf, size, VOTE_KEYPOINTS)) as cache:
        todo = [name for name in names if name not in cache]
        loader = _prefetch(image_dir, todo, getattr(model, "grayscale", False), size)
        for name, image, scale, _ in tqdm(loader, total=len(todo), desc="orientation", unit="img"):
            group = cache.file.create_group(name)
            for index, turn in enumerate(turns):
                pred = _predict(model, image, scale, turn, (image.shape[1], image.shape[0]), device)
                strongest = np.argsort(-pred["scores"], kind="stable")[:VOTE_KEYPOINTS]
                group.create_dataset(f"descriptors{index}", data=pred["descriptors"][strongest].astype(np.float16))
                group.create_dataset(f"scores{index}", data=pred["scores"][strongest])
            cache.checkpoint()
        candidates = [[(cache.file[name][f"descriptors{r}"][()].astype(np.float32), cache.file[name][f"scores{r}"][()])
                       for r in range(len(turns))] for name in names]
    labels = choose_rotations([[d for d, _ in c] for c in candidates], [[s for _, s in c] for c in candidates], device)
    known = np.array([turns.index(written.file[name].attrs.get("rotation", 0)) if name in written else -1
                      for name in names])
    labels = anchor_labels(labels, known, len(turns))
    chosen = {name: turns[label] for name, label in zip(names, labels)}
    rotated = {name: 90 * turn for name, turn in chosen.items() if turn}
    logger.info("features: %d of %d images at a rotation (degrees counter-clockwise): %s",
                len(rotated), len(names), rotated or "none")
    return chosen


def _predict(model: matchers.BaseModel, image: np.ndarray, scale: np.ndarray, turns: int,
             resized_size: tuple[int, int], device: torch.device) -> dict[str, np.ndarray]:
    """One image's features with the image rotated by ``turns`` quarter turns; keypoints (N, 2)
    in original-image pixels, descriptors (N, D), scores (N,)."""
    tensor = torch.from_numpy(rotate_image(image, turns)).float().div_(255.0).to(device)
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    with torch.inference_mode():
        pred = model({"image": tensor})
    keypoints = unrotate_keypoints(pred["keypoints"][0].cpu().numpy(), turns, resized_size)
    return {"keypoints": rescale_keypoints(keypoints, scale), "descriptors": pred["descriptors"][0].cpu().numpy(),
            "scores": pred["scores"][0].cpu().numpy()}


def _write(writer: h5.H5Writer, name: str, pred: dict[str, np.ndarray], size: tuple[int, int],
           uncertainty: float, turns: int) -> None:
    """One image's features; ``turns``, the quarter turns it was extracted at, as the group's
    ``rotation`` attribute."""
    h5.write_features(writer, name, pred["keypoints"], pred["descriptors"].T, pred["scores"], size, uncertainty)
    writer.file[name].attrs["rotation"] = turns


def _prefetch(image_dir: Path, names: list[str], grayscale: bool, max_size: int) -> Iterator[tuple]:
    """Decode and resize the next image on a thread while the model runs on this one."""
    def load(name: str):
        image = read_image(image_dir / name, grayscale=grayscale)
        size = (image.shape[1], image.shape[0])
        resized, scale = resize_max(image, max_size)
        return name, resized, scale, size

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(load, n) for n in names[:2]]
        for index in range(len(names)):
            result = pending[index].result()
            if index + 2 < len(names):
                pending.append(pool.submit(load, names[index + 2]))
            pending[index] = None
            yield result


class FeatureCache:
    """The last few images' features as tensors on the device (pairs revisit the same images).

    Several files may be given (query and reference features, as in hloc's localization); an
    image is read from the first file that has it.
    """

    def __init__(self, paths: list[Path], device: torch.device, size: int = 64) -> None:
        self.files = [h5py.File(path, "r") for path in dict.fromkeys(paths)]
        self.device = device
        self.size = size
        self._items: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def __getitem__(self, name: str) -> dict[str, torch.Tensor]:
        if name in self._items:
            self._items.move_to_end(name)
            return self._items[name]
        group = next((f[name] for f in self.files if name in f), None)
        if group is None:
            raise KeyError(f"no features for image '{name}' in {[f.filename for f in self.files]}")
        item = {
            "keypoints": torch.from_numpy(group["keypoints"][()].astype(np.float32)),
            "descriptors": torch.from_numpy(group["descriptors"][()].astype(np.float32).T.copy()),
            "scores": torch.from_numpy(group["scores"][()].astype(np.float32)),
            "image_size": torch.from_numpy(group["image_size"][()].astype(np.float32)),
        }
        item = {k: v.to(self.device) for k, v in item.items()}
        self._items[name] = item
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return item

    def close(self) -> None:
        for file in self.files:
            file.close()


def collate_pairs(items: list[tuple[dict, dict]]) -> dict[str, torch.Tensor]:
    """Stack pairs into one batch, padding keypoints to the longest with ``mask0/1``.

    A single pair is passed as is (no padding, no masks).
    """
    if len(items) == 1:
        return {key + side: value[None] for side, feats in zip(("0", "1"), items[0]) for key, value in feats.items()}
    batch: dict[str, torch.Tensor] = {}
    for side in ("0", "1"):
        feats = [pair[int(side)] for pair in items]
        length = max(f["keypoints"].shape[0] for f in feats)
        for key in ("keypoints", "descriptors", "scores"):
            batch[key + side] = torch.stack([_pad(f[key], length) for f in feats])
        batch["mask" + side] = torch.stack([
            torch.arange(length, device=f["keypoints"].device) < f["keypoints"].shape[0] for f in feats])
        batch["image_size" + side] = torch.stack([f["image_size"] for f in feats])
    return batch


def _pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    pad = length - tensor.shape[0]
    if pad == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((pad, *tensor.shape[1:]))])


def match_pairs(pairs: list[tuple[str, str]], features_path: Path, conf: dict[str, Any],
                matches_path: Path, device: torch.device, features_ref: Path | None = None) -> int:
    """Match every pair not yet in ``matches_path`` with the configured sparse matcher; return how many.

    The first image of a pair is read from ``features_path``, or from ``features_ref`` when only
    that file has it (hloc's query/reference split).
    """
    paths = [features_path] + ([features_ref] if features_ref else [])
    stamp = fingerprint("matches", conf, [h5.read_stamp(p) for p in dict.fromkeys(paths)])
    with reuse_freed_memory(), open_resumable(matches_path, stamp) as writer:
        todo = [(a, b) for a, b in pairs if not h5.has_pair(writer.file, a, b)]
        if not todo:
            return 0
        model = load_model(conf, device)
        batch_size = pair_batch_size(conf["batch_size"], model, device)
        cache = FeatureCache(paths, device)
        try:
            with tqdm(total=len(todo), desc="matches", unit="pair") as progress:
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start:start + batch_size]
                    batch = collate_pairs([(cache[a], cache[b]) for a, b in chunk])
                    with torch.inference_mode():
                        pred = model(batch)
                    for index, (a, b) in enumerate(chunk):
                        count = cache[a]["keypoints"].shape[0]
                        h5.write_matches(writer, a, b, pred["matches0"][index, :count].cpu().numpy(),
                                         pred["matching_scores0"][index, :count].cpu().numpy())
                    progress.update(len(chunk))
                    writer.checkpoint()
        finally:
            cache.close()
    return len(todo)


def pair_batch_size(requested: int, model: matchers.BaseModel, device: torch.device) -> int:
    """Pairs per forward pass: ``requested``, or when 0 (auto) 16 on GPU and 1 on CPU, where
    padding pairs to a common size costs more memory traffic than batching saves; always 1 for
    models that cannot take padded batches."""
    if not getattr(model, "supports_padding", False):
        return 1
    if requested > 0:
        return requested
    return 16 if device.type == "cuda" else 1
