"""A picture of a reconstruction: points and camera frusta seen from above the scene.

The view looks along the normal of the plane the cameras mostly lie in (of all points when there
are fewer than three cameras), so rings, arcs and walk-throughs read at a glance.
"""
from __future__ import annotations

import os

import numpy as np
import pycolmap
from PIL import Image, ImageDraw


def render_model(model: pycolmap.Reconstruction, path: str | os.PathLike, size: int = 800,
                 max_points: int = 50000, seed: int = 0) -> None:
    """Save a top view of ``model``: points coloured as reconstructed, cameras as red frusta."""
    images = [im for im in model.images.values() if im.has_pose]
    centers = np.array([im.projection_center() for im in images]).reshape(-1, 3)
    points = np.array([p.xyz for p in model.points3D.values()]).reshape(-1, 3)
    colours = np.array([p.color for p in model.points3D.values()], np.uint8).reshape(-1, 3)
    if len(points) > max_points:
        keep = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        points, colours = points[keep], colours[keep]
    everything = np.concatenate([centers, points]) if len(points) else centers
    if len(everything) == 0:
        raise ValueError("the model has no registered image and no point to draw")
    origin = np.median(centers if len(centers) >= 3 else everything, axis=0)
    basis = centers if len(centers) >= 3 else everything
    _, _, axes = np.linalg.svd(basis - basis.mean(0), full_matrices=False)
    to_view = axes[:2] if len(axes) >= 2 else np.eye(3)[:2]
    flat_centers = (centers - origin) @ to_view.T
    flat_points = (points - origin) @ to_view.T
    # Every camera in frame, points up to their 1-99th percentiles (ignores stray triangulations).
    boxes = [flat_centers] if len(centers) else []
    if len(points):
        boxes.append(np.percentile(flat_points, [1, 99], axis=0))
    low, high = np.min([b.min(0) for b in boxes], 0), np.max([b.max(0) for b in boxes], 0)
    middle, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-9)
    pixels = lambda xy: ((xy - middle) / half * 0.45 + 0.5) * size  # noqa: E731
    frustum = 0.05 * half

    canvas = Image.new("RGB", (size, size), (18, 18, 22))
    draw = ImageDraw.Draw(canvas)
    for (x, y), colour in zip(pixels(flat_points), colours):
        draw.rectangle((x - 1, y - 1, x + 1, y + 1), fill=tuple(min(255, 60 + int(c)) for c in colour))
    for image, centre in zip(images, pixels(flat_centers)):
        rotation = image.cam_from_world().rotation.matrix()
        corners = []
        for u, v in ((-1, -0.75), (1, -0.75), (1, 0.75), (-1, 0.75)):
            direction = rotation.T @ np.array([u * 0.5, v * 0.5, 1.0])
            corners.append(pixels(((image.projection_center() + frustum * direction) - origin) @ to_view.T))
        for corner in corners:
            draw.line([tuple(centre), tuple(corner)], fill=(235, 60, 60))
        draw.polygon([tuple(c) for c in corners], outline=(235, 60, 60))
    draw.text((8, 8), f"{len(images)} cameras, {model.num_points3D()} points", fill=(240, 240, 240))
    canvas.save(path)
