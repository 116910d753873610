"""Metric scale of a reconstruction from depth priors.

Structure from motion recovers a scene up to scale. A metric depth source (Depth Pro, ground
truth, MASt3R) fixes it: at every triangulated keypoint the ratio

    prior depth (metres) / reconstructed depth (model units)

estimates the metres per model unit. Ratios are combined in log space, where multiplicative
depth errors are symmetric: per image, the median of the log-ratios after rejecting those
further than ``threshold`` robust standard deviations (1.4826 x MAD) from it, iterated; then the
same robust median over the per-image values, so a few images with bad depth (sky, glass, a
wrong network prediction) cannot pull the global scale. The spread reported is the robust
standard deviation of the per-image log-scales (about the relative disagreement between images).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pycolmap

from .depth import DepthSource, sample_depth

MAD_TO_SIGMA = 1.4826  # standard deviation of a normal distribution per unit of its MAD


class ScaleEstimationError(ValueError):
    """Too few usable depth observations to estimate a metric scale."""


@dataclass
class ScaleEstimate:
    """Metres per reconstruction unit, with how well the images agree.

    ``scale``: multiply the model by it (:func:`apply_scale`) to make it metric.
    ``spread``: robust standard deviation of the per-image log-scales (0.02 = images disagree by
    about 2 %). ``per_image``: each used image's scale. ``num_observations``/``num_inliers``:
    keypoints with both a prior and a reconstructed depth / those kept by the rejection, in all
    and (``per_image_observations``, ``per_image_inliers``) per used image.
    """

    scale: float
    spread: float
    num_images: int
    num_observations: int
    num_inliers: int
    per_image: dict[str, float] = field(default_factory=dict)
    per_image_observations: dict[str, int] = field(default_factory=dict)
    per_image_inliers: dict[str, int] = field(default_factory=dict)
    rejected_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready summary for report.json."""
        return asdict(self)


def robust_median(values: np.ndarray, threshold: float = 3.0, min_sigma: float = 0.01,
                  iterations: int = 3) -> tuple[float, np.ndarray]:
    """Median of ``values`` (N,) after iteratively dropping those more than ``threshold``
    robust standard deviations (1.4826 x MAD, at least ``min_sigma``) from the current median.

    Returns the centre and the (N,) inlier mask. The floor keeps near-exact data whole: on log
    depth ratios 0.01 means deviations below 3 % are never called outliers, however tightly
    the rest agree (no depth prior is better than that).
    """
    if values.size == 0:
        raise ScaleEstimationError("no values to take a median of")
    inliers = np.ones(values.shape, dtype=bool)
    centre = float(np.median(values))
    for _ in range(iterations):
        deviation = np.abs(values - centre)
        sigma = MAD_TO_SIGMA * float(np.median(deviation[inliers]))
        inliers = deviation <= threshold * max(sigma, min_sigma)
        centre = float(np.median(values[inliers]))
    return centre, inliers


def image_log_ratios(reconstruction: pycolmap.Reconstruction, image_id: int, depth: np.ndarray) -> np.ndarray:
    """log(prior depth / reconstructed depth) at the image's triangulated keypoints, (M,).

    Keypoints without a usable prior (outside the map, unknown depth) or behind the camera are
    left out. pycolmap exposes observations one object at a time, so they are gathered into
    arrays once; everything after is vectorised.
    """
    image = reconstruction.image(image_id)
    observations = image.get_observation_points2D()
    if len(observations) == 0:
        return np.empty(0)
    xy = np.array([p.xy for p in observations], dtype=np.float64)
    xyz = np.array([reconstruction.point3D(p.point3D_id).xyz for p in observations], dtype=np.float64)
    z_model = (image.cam_from_world() * xyz)[:, 2]
    z_prior = sample_depth(depth, xy)
    valid = np.isfinite(z_prior) & (z_model > 0)
    return np.log(z_prior[valid] / z_model[valid])


def estimate_metric_scale(reconstruction: pycolmap.Reconstruction, source: DepthSource,
                          min_points_per_image: int = 10, threshold: float = 3.0) -> ScaleEstimate:
    """Metres per model unit of ``reconstruction`` from the metric depth of ``source``.

    Every registered image with at least ``min_points_per_image`` usable triangulated keypoints
    gives one robust log-scale; the result is their robust median (see the module docstring).
    Raises :class:`ScaleEstimationError` when no image qualifies.
    """
    names, centres, counts, inlier_counts = [], [], [], []
    observed = 0
    for image_id in sorted(reconstruction.reg_image_ids()):
        name = reconstruction.image(image_id).name
        ratios = image_log_ratios(reconstruction, image_id, source.depth(name))
        observed += ratios.size
        if ratios.size < min_points_per_image:
            continue
        centre, inliers = robust_median(ratios, threshold)
        names.append(name)
        centres.append(centre)
        counts.append(int(ratios.size))
        inlier_counts.append(int(inliers.sum()))
    if not centres:
        raise ScaleEstimationError(
            f"no registered image has {min_points_per_image} triangulated keypoints with a {source.name} depth")
    log_scales = np.array(centres)
    log_scale, good = robust_median(log_scales, threshold)
    spread = MAD_TO_SIGMA * float(np.median(np.abs(log_scales[good] - log_scale)))
    return ScaleEstimate(
        scale=float(np.exp(log_scale)),
        spread=spread,
        num_images=int(good.sum()),
        num_observations=observed,
        num_inliers=sum(inlier_counts),
        per_image={n: float(np.exp(c)) for n, c in zip(names, centres)},
        per_image_observations=dict(zip(names, counts)),
        per_image_inliers=dict(zip(names, inlier_counts)),
        rejected_images=[n for n, g in zip(names, good) if not g],
    )


def apply_scale(reconstruction: pycolmap.Reconstruction, scale: float) -> None:
    """Scale the model about the world origin in place: points and camera centres times
    ``scale``; rotations unchanged (``cam_from_world`` translations scale too)."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"a metric scale must be a positive finite number, got {scale}")
    reconstruction.transform(pycolmap.Sim3d(scale, pycolmap.Rotation3d(), np.zeros(3)))
