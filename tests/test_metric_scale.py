"""Metric scale from depth priors on a synthetic room with exact depth maps.

The scene: cameras inside a box-shaped room looking at its walls. Every pixel's depth is the
exact ray/wall intersection, and the 3D points lie on the walls, so the depth maps are the exact
truth for the reconstruction's keypoints. The reconstruction is the metric scene moved by a
random similarity with scale 1/s; the estimator must recover s.
"""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from recon.priors.depth import ArrayDepthSource
from recon.priors.scale import ScaleEstimationError, apply_scale, estimate_metric_scale, robust_median

ROOM = np.array([4.0, 3.0, 5.0])  # half extents of the room (metres)
WIDTH, HEIGHT, FOCAL = 160, 120, 110.0
TRUE_SCALE = 3.7  # metres per reconstruction unit


def look_rotation(yaw: float, pitch: float) -> np.ndarray:
    """cam_from_world rotation of a camera looking along (yaw, pitch), x right, y down."""
    forward = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def room_depth(rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(H, W) depth of every pixel centre: distance along the optical axis to the room's walls."""
    cols, rows = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    rays_cam = np.stack([(cols - WIDTH / 2) / FOCAL, (rows - HEIGHT / 2) / FOCAL, np.ones_like(cols)], -1)
    rays = rays_cam @ rotation  # world directions with unit camera z: the ray parameter is the depth
    with np.errstate(divide="ignore"):
        exits = (np.sign(rays) * ROOM - centre) / rays
    exits[~np.isfinite(exits) | (exits <= 0)] = np.inf
    return exits.min(-1).astype(np.float32)


def wall_points(rng: np.random.Generator, count: int) -> np.ndarray:
    """Uniform random points on the six walls."""
    points = rng.uniform(-1, 1, (count, 3)) * ROOM
    axis = rng.integers(0, 3, count)
    points[np.arange(count), axis] = rng.choice([-1.0, 1.0], count) * ROOM[axis]
    return points


def room_scene(seed: int = 0, num_images: int = 8, num_points: int = 3000):
    """Metric-frame reconstruction of the room (exact projections) and its exact depth maps."""
    rng = np.random.default_rng(seed)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera.create_from_model_name(
        1, "PINHOLE", FOCAL, WIDTH, HEIGHT))
    points = wall_points(rng, num_points)
    tracks = [pycolmap.Track() for _ in points]
    depths = {}
    for image_id in range(1, num_images + 1):
        rotation = look_rotation(rng.uniform(-0.6, 0.6), rng.uniform(-0.2, 0.2))
        centre = rng.uniform(-1, 1, 3) * [1.0, 0.5, 1.0]
        cam = (points - centre) @ rotation.T
        uv = FOCAL * cam[:, :2] / cam[:, 2:] + [WIDTH / 2, HEIGHT / 2]
        seen = np.flatnonzero((cam[:, 2] > 0.1) & (uv >= 0).all(1) & (uv < [WIDTH, HEIGHT]).all(1))
        name = f"im{image_id:02d}.png"
        image = pycolmap.Image(name=name, camera_id=1, image_id=image_id,
                               points2D=[pycolmap.Point2D(xy) for xy in uv[seen]])
        rec.add_image_with_trivial_frame(
            image, pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ centre))
        for index, point in enumerate(seen):
            tracks[point].add_element(image_id, index)
        depths[name] = room_depth(rotation, centre)
    for xyz, track in zip(points, tracks):
        if track.length() >= 2:
            rec.add_point3D(xyz, track)
    return rec, depths


def to_arbitrary_frame(rec: pycolmap.Reconstruction, seed: int = 1) -> None:
    """What SfM returns: the metric scene under a random similarity of scale 1 / TRUE_SCALE."""
    rng = np.random.default_rng(seed)
    rotation = pycolmap.Rotation3d(rng.normal(size=3))
    rec.transform(pycolmap.Sim3d(1 / TRUE_SCALE, rotation, rng.normal(size=3) * 5))


@pytest.fixture(scope="module")
def scene():
    rec, depths = room_scene()
    to_arbitrary_frame(rec)
    return rec, depths


def corrupt(depths: dict, seed: int, noise: float, outlier_fraction: float) -> dict:
    """Multiplicative noise (depth * (1 + noise * N(0, 1))) and outlier pixels (uniform over
    [0, 3 x the map's largest depth])."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, depth in depths.items():
        noisy = depth * (1 + noise * rng.standard_normal(depth.shape))
        outliers = rng.random(depth.shape) < outlier_fraction
        noisy[outliers] = rng.uniform(0, 3 * depth.max(), outliers.sum())
        out[name] = noisy.astype(np.float32)
    return out


def test_room_depth_maps_are_exact_at_the_keypoints():
    """Fixture check: each observed point's camera depth equals the map at its pixel to within
    the depth change across half a pixel."""
    rec, depths = room_scene(num_images=2)
    image = rec.image(1)
    observations = image.get_observation_points2D()
    xy = np.array([p.xy for p in observations])
    z = (image.cam_from_world() * np.array([rec.point3D(p.point3D_id).xyz for p in observations]))[:, 2]
    sampled = depths[image.name][np.floor(xy[:, 1]).astype(int), np.floor(xy[:, 0]).astype(int)]
    assert np.median(np.abs(sampled / z - 1)) < 2e-3


def test_scale_from_exact_depth_is_within_half_a_percent(scene):
    rec, depths = scene
    estimate = estimate_metric_scale(rec, ArrayDepthSource(depths))
    assert abs(estimate.scale / TRUE_SCALE - 1) < 0.005
    assert estimate.spread < 0.005
    assert estimate.num_images == 8 and not estimate.rejected_images
    assert estimate.num_inliers > 0.9 * estimate.num_observations


def test_scale_with_noise_and_outlier_pixels_is_within_three_percent(scene):
    """10 % multiplicative depth noise and 5 % outlier pixels."""
    rec, depths = scene
    estimate = estimate_metric_scale(rec, ArrayDepthSource(corrupt(depths, 2, noise=0.10, outlier_fraction=0.05)))
    assert abs(estimate.scale / TRUE_SCALE - 1) < 0.03
    assert estimate.spread < 0.05
    assert estimate.num_inliers < estimate.num_observations  # the outliers were rejected


def test_an_image_with_wrong_depth_is_rejected(scene):
    """One image whose depth is 3x too far (a bad prediction) cannot move the global scale."""
    rec, depths = scene
    wrong = dict(depths)
    wrong["im03.png"] = depths["im03.png"] * 3
    estimate = estimate_metric_scale(rec, ArrayDepthSource(wrong))
    assert estimate.rejected_images == ["im03.png"]
    assert abs(estimate.per_image["im03.png"] / TRUE_SCALE - 3) < 0.02
    assert abs(estimate.scale / TRUE_SCALE - 1) < 0.005


def test_applied_scale_makes_the_model_metric():
    rec, depths = room_scene(num_images=4)
    metric_centres = np.array([rec.image(i).projection_center() for i in range(1, 5)])
    to_arbitrary_frame(rec)
    apply_scale(rec, estimate_metric_scale(rec, ArrayDepthSource(depths)).scale)
    centres = np.array([rec.image(i).projection_center() for i in range(1, 5)])
    metric_distances = np.linalg.norm(metric_centres[:, None] - metric_centres[None], axis=-1)
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert np.allclose(distances, metric_distances, rtol=0.005)
    with pytest.raises(ValueError, match="positive"):
        apply_scale(rec, -1.0)


def test_no_usable_depth_is_a_clear_error(scene):
    rec, depths = scene
    empty = ArrayDepthSource({name: np.zeros_like(d) for name, d in depths.items()}, name="mast3r")
    with pytest.raises(ScaleEstimationError, match="mast3r depth"):
        estimate_metric_scale(rec, empty)


def test_robust_median_ignores_a_third_of_gross_outliers():
    rng = np.random.default_rng(0)
    inliers = rng.normal(2.0, 0.05, 700)
    values = np.concatenate([inliers, rng.uniform(5, 10, 300)])
    centre, mask = robust_median(values)
    assert abs(centre - 2.0) < 0.01
    assert not mask[700:].any()
    assert mask[:700].mean() > 0.98
