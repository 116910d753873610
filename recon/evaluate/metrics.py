"""Relative-pose errors over all ground-truth image pairs and the accuracy measures built on them.

Definitions (every angle in degrees):

* Pairs: every unordered pair ``(i, j)``, ``i < j`` in the sorted ground-truth image names. The
  relative pose of a pair is ``cam_j_from_cam_i`` (:func:`~recon.evaluate.geometry.relative_poses`),
  computed in the ground truth and in the estimate, so the errors do not depend on the gauge
  (world frame and scale) of either.
* Rotation error: angle of ``R_ji_gt^T R_ji_est`` (the same for ``cam_i_from_cam_j``).
* Translation error: angle between the directions of ``t_ji_gt`` and ``t_ji_est``, in [0, 180]
  (a camera on the wrong side of its partner scores near 180). With ``sign_ambiguous=True`` it is
  ``min(a, 180 - a)`` in [0, 90], the convention of the CO3D evaluations (RelPose++,
  PoseDiffusion, VGGSfM, MASt3R-SfM), which inherit it from essential-matrix estimation. Zero
  baseline: when the ground-truth baseline ``|t_ji_gt|`` is below ``1e-9`` of the ground-truth
  scene extent, the direction is undefined and the translation error is 0 (only rotation
  counts); when only the estimated baseline is below ``1e-9`` of the estimate's extent, it is the
  worst value (180, or 90 when sign-ambiguous).
* Pose error: ``max(rotation error, translation error)``.
* Unregistered images: every pair with an image missing from the model has all three errors
  ``inf``; it counts in every denominator and is below no threshold.
* AUC@T: area under the recall-vs-error curve of the pose errors from 0 to T, divided by T
  (the ``pose_auc`` of SuperGlue / LightGlue: the curve is piecewise linear through
  ``(0, 0)`` and ``(e_k, k / P)`` for the sorted errors, and flat from the last error below T).
* RRA@15 / RTA@15: fraction of pairs with rotation / translation error ``< 15``.
* mAA(30): mean over the integer thresholds ``T = 1..30`` of the fraction of pairs with pose error
  ``< T`` (``<= 30`` for the last one). This is PoseDiffusion's ``calculate_auc_np`` (cumulative
  normalised histogram with bins ``[0, 1), [1, 2), ..., [29, 30]``), which VGGSfM and MASt3R-SfM
  report as mAA(30) / "AUC@30" on CO3D.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .geometry import direction_angle_deg, relative_poses, rotation_angle_deg

AUC_THRESHOLDS = (1, 5, 10, 20)
RRA_RTA_THRESHOLD = 15.0
MAA_MAX_THRESHOLD = 30
DEGENERATE_BASELINE = 1e-9  # relative to the scene extent
PAIR_CHUNK = 1 << 18  # pairs per vectorised batch (bounds memory to ~100 MB for huge scenes)


@dataclass(frozen=True)
class PairErrors:
    """Per-pair errors (P = N (N - 1) / 2 pairs, ``i < j``).

    i, j: (P,) indices into the ground-truth names; rotation, translation: (P,) degrees, ``inf``
    where an image of the pair is unregistered; registered: (P,) both images registered.
    """

    i: np.ndarray
    j: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    registered: np.ndarray

    @property
    def pose(self) -> np.ndarray:
        """(P,) max of rotation and translation error."""
        return np.maximum(self.rotation, self.translation)


def pair_errors(
    R_gt: np.ndarray,
    t_gt: np.ndarray,
    R_est: np.ndarray,
    t_est: np.ndarray,
    registered: np.ndarray,
    extent_gt: float,
    extent_est: float,
    sign_ambiguous: bool = False,
) -> PairErrors:
    """Relative-pose errors of every pair ``i < j`` (definitions in the module docstring).

    R_gt, R_est: (N, 3, 3) and t_gt, t_est: (N, 3) cam_from_world; rows of unregistered images in
    the estimate are ignored. registered: (N,) bool. extent_gt / extent_est: scene sizes that
    set the zero-baseline tolerance.
    """
    n = len(R_gt)
    i, j = np.triu_indices(n, k=1)
    rotation = np.full(len(i), np.inf)
    translation = np.full(len(i), np.inf)
    both = registered[i] & registered[j]
    worst = 90.0 if sign_ambiguous else 180.0
    starts = range(0, len(i), PAIR_CHUNK)
    for start in tqdm(starts, desc="pair errors", unit="chunk", disable=len(starts) < 8):
        sel = np.flatnonzero(both[start:start + PAIR_CHUNK]) + start
        Rg, tg = relative_poses(R_gt, t_gt, i[sel], j[sel])
        Re, te = relative_poses(R_est, t_est, i[sel], j[sel])
        rotation[sel] = rotation_angle_deg(Rg, Re)
        angle = direction_angle_deg(tg, te)
        if sign_ambiguous:
            angle = np.minimum(angle, 180.0 - angle)
        gt_degenerate = np.linalg.norm(tg, axis=1) <= DEGENERATE_BASELINE * extent_gt
        est_degenerate = np.linalg.norm(te, axis=1) <= DEGENERATE_BASELINE * extent_est
        angle = np.where(est_degenerate, worst, angle)
        translation[sel] = np.where(gt_degenerate, 0.0, angle)
    return PairErrors(i, j, rotation, translation, both)


def pose_auc(errors: np.ndarray, thresholds: tuple[float, ...] = AUC_THRESHOLDS) -> list[float]:
    """Normalised area under the recall curve of ``errors`` up to each threshold.

    errors: (P,) with ``inf`` for failures. Returns one value in [0, 1] per threshold.
    """
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    if errors.size == 0:
        raise ValueError("pose_auc needs at least one error")
    recall = np.arange(len(errors) + 1) / len(errors)  # recall[k] after the k smallest errors
    curve_x = np.concatenate([[0.0], errors])
    aucs = []
    for threshold in thresholds:
        k = int(np.searchsorted(errors, threshold, side="left"))  # errors strictly below
        x = np.concatenate([curve_x[:k + 1], [threshold]])
        y = np.concatenate([recall[:k + 1], [recall[k]]])
        aucs.append(float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0) / threshold))  # trapezoid rule
    return aucs


def accuracy(errors: np.ndarray, threshold: float) -> float:
    """Fraction of ``errors`` strictly below ``threshold`` (``inf`` never is)."""
    return float(np.mean(np.asarray(errors) < threshold))


def mean_average_accuracy(errors: np.ndarray, max_threshold: int = MAA_MAX_THRESHOLD) -> float:
    """mAA(max_threshold): mean of the accuracies at ``1..max_threshold`` (last one inclusive)."""
    errors = np.asarray(errors, dtype=np.float64)
    below = [np.mean(errors < t) for t in range(1, max_threshold)]
    below.append(np.mean(errors <= max_threshold))
    return float(np.mean(below))
