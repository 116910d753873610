"""Pair strategies besides the scene graph, behind the same ``strategy(names, conf, context)`` interface.

* ``retrieval`` - hloc's ``pairs_from_retrieval``: each image with its ``num_matched`` most similar
  images by global-descriptor dot product (``global-descriptors.h5``, ``/<name>/global_descriptor``).
* ``sequential_retrieval`` - videos: each frame with the next ``overlap`` frames, plus
  ``loop_closures`` retrieved frames further than ``overlap`` away (ASMK on the frames' tokens, or
  global descriptors when ``global_descriptors`` is given) so that revisits are matched.
* ``covisibility`` - hloc's ``pairs_from_covisibility``: from an existing COLMAP model, each image
  with the ``num_matched`` images that observe the most of its 3D points.
* ``poses`` - hloc's ``pairs_from_poses``: from an existing model, each image with the
  ``num_matched`` nearest camera centres whose viewing directions differ by at most
  ``rotation_threshold`` degrees.

Each returns unordered, deduplicated pairs (query first in the order found).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.h5 import read_global_descriptors
from . import PAIR_STRATEGIES, PairsContext
from .scene_graph import ASMK_OPTIONS, canonical_pairs, image_similarity, token_source


def top_k_pairs(similarity: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """For each row i, its ``k`` most similar columns j != i (and ``allowed[i, j]``), as
    canonical pairs (P, 2) i < j. similarity, allowed: (N, N)."""
    num = similarity.shape[0]
    if num < 2 or k <= 0:
        return torch.empty(0, 2, dtype=torch.long)
    masked = similarity.float().clone()
    masked.fill_diagonal_(-math.inf)
    if allowed is not None:
        masked[~allowed] = -math.inf
    values, columns = torch.topk(masked, min(k, num - 1), dim=1)
    rows = torch.arange(num)[:, None].expand_as(columns)
    valid = values > -math.inf
    return canonical_pairs(rows[valid], columns[valid], num)


def _named(names: list[str], pairs: torch.Tensor) -> list[tuple[str, str]]:
    return [(names[i], names[j]) for i, j in pairs.tolist()]


def _global_path(conf: dict[str, Any], context: PairsContext) -> Path:
    path = Path(conf["global_descriptors"]) if conf["global_descriptors"] else context.output_dir / "global-descriptors.h5"
    if not path.exists():
        raise FileNotFoundError(f"pairs: global descriptors {path} do not exist (run a global-descriptor stage "
                                "or set global_descriptors)")
    return path


def global_similarity(path: Path, names: list[str]) -> torch.Tensor:
    """Dot products (N, N) of the images' global descriptors (hloc's retrieval score)."""
    descriptors = torch.from_numpy(read_global_descriptors(path, names))
    return descriptors @ descriptors.T


@PAIR_STRATEGIES.register("retrieval", num_matched=10, global_descriptors="")
def retrieval_pairs(names: list[str], conf: dict[str, Any], context: PairsContext) -> list[tuple[str, str]]:
    """hloc-style retrieval: top ``num_matched`` images by global descriptor similarity."""
    return _named(names, top_k_pairs(global_similarity(_global_path(conf, context), names), conf["num_matched"]))


def sequential_window(num: int, overlap: int) -> torch.Tensor:
    """Pairs (i, i + d) for d = 1..overlap, (P, 2)."""
    offsets = torch.arange(1, overlap + 1)
    first = torch.arange(num)[:, None].expand(num, len(offsets))
    second = first + offsets[None, :]
    keep = second < num
    return torch.stack([first[keep], second[keep]], 1)


@PAIR_STRATEGIES.register("sequential_retrieval", overlap=5, loop_closures=5, global_descriptors="", **ASMK_OPTIONS)
def sequential_retrieval(names: list[str], conf: dict[str, Any], context: PairsContext) -> list[tuple[str, str]]:
    """Video frames: the next ``overlap`` frames plus ``loop_closures`` retrieved distant frames.

    Names are taken in the given order (the pipeline sorts them, which is frame order for
    numbered frames).
    """
    num = len(names)
    window = sequential_window(num, conf["overlap"])
    if conf["loop_closures"] <= 0 or num < 2:
        return _named(names, canonical_pairs(window[:, 0], window[:, 1], max(num, 1)))
    if conf["global_descriptors"]:
        similarity = global_similarity(_global_path(conf, context), names)
    else:
        similarity = image_similarity(token_source(conf, context, names), names, conf, context.seed, context.device)
    index = torch.arange(num)
    distant = (index[:, None] - index[None, :]).abs() > conf["overlap"]
    loops = top_k_pairs((similarity + similarity.T) / 2, conf["loop_closures"], distant)
    both = torch.cat([window, loops])
    return _named(names, canonical_pairs(both[:, 0], both[:, 1], num))


def _read_model(conf: dict[str, Any]):
    """The model named by ``conf["model"]``: a COLMAP model folder or a recon output folder."""
    from ..evaluate.report import load_model

    if not conf["model"] or not Path(conf["model"]).exists():
        raise FileNotFoundError(f"pairs: model {conf['model']!r} does not exist (a COLMAP sparse model folder "
                                "or a recon output folder)")
    return load_model(conf["model"])


def _model_indices(model, names: list[str]) -> tuple[list[int], np.ndarray]:
    """Image ids of the model images that are in ``names``, and their positions in ``names``."""
    position = {name: i for i, name in enumerate(names)}
    ids = [image_id for image_id, image in model.images.items() if image.has_pose and image.name in position]
    if not ids:
        raise ValueError("pairs: none of the images is registered in the model")
    return ids, np.array([position[model.images[i].name] for i in ids], dtype=np.int64)


def covisibility_counts(model, image_ids: list[int]) -> torch.Tensor:
    """(n, n) number of 3D points observed by both images, for ``image_ids`` of a pycolmap model.

    Built as ``A^T A`` of the sparse point-by-image incidence matrix A (a point seen twice in one
    image counts once).
    """
    import scipy.sparse

    slot = {image_id: k for k, image_id in enumerate(image_ids)}
    observations = np.array([(point_id, slot[e.image_id]) for point_id, point in model.points3D.items()
                             for e in point.track.elements if e.image_id in slot], dtype=np.int64).reshape(-1, 2)
    if len(observations) == 0:
        return torch.zeros(len(image_ids), len(image_ids))
    points, images = np.unique(observations, axis=0).T
    _, rows = np.unique(points, return_inverse=True)
    incidence = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, images)), shape=(rows.max() + 1, len(image_ids)))
    counts = torch.from_numpy((incidence.T @ incidence).toarray()).float()
    counts.fill_diagonal_(0)
    return counts


@PAIR_STRATEGIES.register("covisibility", model="", num_matched=20)
def covisibility_pairs(names: list[str], conf: dict[str, Any], context: PairsContext) -> list[tuple[str, str]]:
    """From an existing model: each image with the ``num_matched`` images sharing most 3D points."""
    model = _read_model(conf)
    ids, positions = _model_indices(model, names)
    counts = covisibility_counts(model, ids)
    pairs = top_k_pairs(counts, conf["num_matched"], counts > 0)
    return [(names[positions[i]], names[positions[j]]) for i, j in pairs.tolist()]


def pose_neighbours(cam_from_world_R: torch.Tensor, centres: torch.Tensor, k: int,
                    rotation_threshold: float) -> torch.Tensor:
    """Pairs of nearest camera centres among views within ``rotation_threshold`` degrees.

    cam_from_world_R: (N, 3, 3); centres: (N, 3) world positions. The angle is the one between
    viewing directions (third rows of R), as hloc's ``pairs_from_poses``.
    """
    directions = cam_from_world_R[:, 2, :]
    cosine = (directions @ directions.T).clamp(-1, 1)
    allowed = torch.rad2deg(torch.arccos(cosine)) <= rotation_threshold
    distance = torch.cdist(centres, centres)
    return top_k_pairs(-distance, k, allowed)


@PAIR_STRATEGIES.register("poses", model="", num_matched=20, rotation_threshold=30.0)
def poses_pairs(names: list[str], conf: dict[str, Any], context: PairsContext) -> list[tuple[str, str]]:
    """From the poses of an existing model: nearest cameras with similar viewing directions."""
    model = _read_model(conf)
    ids, positions = _model_indices(model, names)
    poses = [model.images[i].cam_from_world() for i in ids]
    rotations = torch.tensor(np.stack([p.rotation.matrix() for p in poses]), dtype=torch.float64)
    translations = torch.tensor(np.stack([p.translation for p in poses]), dtype=torch.float64)
    centres = -(rotations.transpose(1, 2) @ translations[:, :, None])[:, :, 0]
    pairs = pose_neighbours(rotations, centres, conf["num_matched"], conf["rotation_threshold"])
    return [(names[positions[i]], names[positions[j]]) for i, j in pairs.tolist()]
