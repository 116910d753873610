"""One common in-plane orientation for all images, for features that are not rotation invariant.

ALIKED, SuperPoint, DISK and LightGlue are trained on upright images: two views of the same
surface rotated 180 degrees relative to each other give almost no correct matches (and the few
wrong ones a fundamental matrix happily fits). Collections do contain such images - a camera held
upside down or in portrait, or a gantry that photographs the far side of an object upside down
(Middlebury's templeSparseRing: 5 of its 16 views). SIFT does not care; these networks do.

``features.rotations: n`` (1, 2 or 4) lets the extractor consider ``n`` in-plane rotations of
every image (multiples of 360/n degrees) and extract each image at the rotation that brings all
images to one common "up":

1. every image's features at each candidate rotation, at a small size (:data:`VOTE_SIZE`, longest
   side): only their strongest keypoints vote. Four candidates at 512 px cost about 1.9
   extractions at 1024 px (measured in benchmarks/matchers_real.py), so with the final extraction
   an image costs 2.9 instead of 4 full-size candidates. They are cached per image
   (``features-orientation.h5`` beside ``features.h5``): a new image costs its own candidates only;
2. for every pair of images, the candidate rotation of the second that agrees best with the first
   unrotated: most mutual nearest neighbours passing Lowe's ratio test among the two images'
   strongest keypoints; the margin over the runner-up rotation is the vote's confidence;
3. the votes chained along the maximum spanning tree of the confidences give every image's
   rotation up to one common offset, chosen so the most images stay unrotated - or, when some
   images were already extracted, so they keep the rotation they were extracted at (an image's
   features, hence its matches, never change once written);
4. the full-size extraction of each new image at its rotation (the rotation is stored with its
   features).

Keypoints are mapped back to the original image's pixels, so the files downstream (matches,
database, models) are the same as without rotation. n = 1 (the default) is the plain extractor.
"""
from __future__ import annotations

import numpy as np
import torch

from matchers.nearest_neighbor import mutual_check, nearest_neighbours
from ..align.spanning_tree import max_spanning_tree

ROTATION_CHOICES = (1, 2, 4)
VOTE_KEYPOINTS = 512     # strongest keypoints per image that vote on relative rotations
VOTE_RATIO = 0.8         # Lowe's ratio test of the votes (COLMAP's SIFT default)
VOTE_CHUNK = 16          # images compared with one image at a time (bounds the similarity memory)
VOTE_SIZE = 512          # longest image side of the voting candidates (never above features.resize_max)


def candidate_turns(rotations: int) -> list[int]:
    """Quarter turns (counter-clockwise) of the ``rotations`` candidates, e.g. 2 -> [0, 2]."""
    if rotations not in ROTATION_CHOICES:
        raise ValueError(f"features.rotations must be one of {ROTATION_CHOICES}, got {rotations}")
    return [k * (4 // rotations) for k in range(rotations)]


def rotate_image(image: np.ndarray, turns: int) -> np.ndarray:
    """``image`` (H, W[, C]) rotated counter-clockwise by ``turns`` quarter turns (a copy)."""
    return np.ascontiguousarray(np.rot90(image, turns % 4))


def unrotate_keypoints(keypoints: np.ndarray, turns: int, size: tuple[int, int]) -> np.ndarray:
    """Keypoints (N, 2) found in an image rotated by :func:`rotate_image` mapped back to the
    unrotated image of ``size`` (width, height), hloc convention (top-left pixel centre at 0, 0)."""
    width, height = size
    x, y = keypoints[:, 0], keypoints[:, 1]
    turns %= 4
    if turns == 0:
        return keypoints
    if turns == 1:
        return np.stack([width - 1 - y, x], 1)
    if turns == 2:
        return np.stack([width - 1 - x, height - 1 - y], 1)
    return np.stack([y, height - 1 - x], 1)


def strongest_descriptors(descriptors: np.ndarray, scores: np.ndarray, count: int) -> np.ndarray:
    """The descriptors (count, D) of the ``count`` highest-scoring keypoints of (N, D) / (N,)."""
    return descriptors[np.argsort(-scores, kind="stable")[:count]]


def rotation_votes(descriptors: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair's vote on its relative rotation.

    Args:
        descriptors: ``(I, R, K, D)`` unit descriptors of ``K`` keypoints of each of ``I``
            images at each of its ``R`` candidate rotations.

    Returns:
        pairs ``(P, 2)`` with i < j; ``best`` ``(P,)``, the candidate index of image j that
        agrees best with image i unrotated; ``margin`` ``(P,)``, its mutual ratio-test matches
        minus those of the runner-up candidate (0 when R = 1).
    """
    num_images, num_candidates, count, _ = descriptors.shape
    pairs, best, margin = [], [], []
    for i in range(num_images - 1):
        for start in range(i + 1, num_images, VOTE_CHUNK):
            others = descriptors[start:start + VOTE_CHUNK]                       # (J, R, K, D)
            similarity = torch.einsum("kd,jrld->jrkl", descriptors[i, 0], others)
            similarity = similarity.reshape(-1, count, count)
            forward, _ = nearest_neighbours(similarity, VOTE_RATIO, None)
            backward, _ = nearest_neighbours(similarity.transpose(1, 2), VOTE_RATIO, None)
            votes = (mutual_check(forward, backward) > -1).sum(-1).reshape(len(others), num_candidates)
            top = votes.topk(min(2, num_candidates), dim=1)
            runner_up = top.values[:, 1] if num_candidates > 1 else top.values[:, 0]
            pairs.append(np.stack([np.full(len(others), i), np.arange(start, start + len(others))], 1))
            best.append(top.indices[:, 0].cpu().numpy())
            margin.append((top.values[:, 0] - runner_up).cpu().numpy())
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pairs), np.concatenate(best), np.concatenate(margin)


def solve_orientations(num_images: int, num_candidates: int, pairs: np.ndarray, best: np.ndarray,
                       margin: np.ndarray) -> np.ndarray:
    """Each image's candidate index (I,) from the pair votes of :func:`rotation_votes`.

    The relative rotations are chained along the maximum spanning tree of the margins (pairs with
    no margin do not vote); images without a confident vote keep candidate 0. The common offset
    is the most frequent label, so an already consistent collection is left unrotated.
    """
    labels = np.zeros(num_images, np.int64)
    confident = margin > 0
    if not confident.any():
        return labels
    pairs, best, margin = pairs[confident], best[confident], margin[confident].astype(np.float64)
    root = int(pairs[np.argmax(margin), 0])
    order, parent = max_spanning_tree(pairs, margin, num_images, root)
    relative = {(int(i), int(j)): int(b) for (i, j), b in zip(pairs, best)}
    for node in order[1:]:  # one step per image
        up = int(parent[node])
        step = relative[(up, int(node))] if (up, int(node)) in relative else -relative[(int(node), up)]
        labels[node] = (labels[up] + step) % num_candidates
    offset = np.bincount(labels[order], minlength=num_candidates).argmax()
    labels[order] = (labels[order] - offset) % num_candidates
    return labels


def anchor_labels(labels: np.ndarray, known: np.ndarray, num_candidates: int) -> np.ndarray:
    """``labels`` (I,) shifted by the common offset that agrees with the most ``known`` labels (I,),
    -1 where unknown (images already extracted keep their rotation); unchanged when none is known.
    Images whose known label still disagrees keep it."""
    has = known >= 0
    if not has.any():
        return labels
    offset = np.bincount((known[has] - labels[has]) % num_candidates, minlength=num_candidates).argmax()
    return np.where(has, known, (labels + offset) % num_candidates)


def choose_rotations(descriptors: list[list[np.ndarray]], scores: list[list[np.ndarray]],
                     device: torch.device) -> np.ndarray:
    """Candidate index per image (I,) from every image's features at every candidate rotation:
    ``descriptors[i][r]`` (N, D) and ``scores[i][r]`` (N,)."""
    count = min(VOTE_KEYPOINTS, *(len(s) for per_image in scores for s in per_image))
    if count == 0:
        return np.zeros(len(descriptors), np.int64)
    stacked = np.stack([np.stack([strongest_descriptors(d, s, count) for d, s in zip(ds, ss)])
                        for ds, ss in zip(descriptors, scores)])
    pairs, best, margin = rotation_votes(torch.from_numpy(stacked).float().to(device))
    return solve_orientations(len(descriptors), stacked.shape[1], pairs, best, margin)
