"""Two images side by side with their matches drawn as lines."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw


def plot_matches(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray, keypoints1: np.ndarray,
                 path: str | os.PathLike, inliers: np.ndarray | None = None, max_lines: int = 300,
                 height: int = 480, seed: int = 0) -> None:
    """Save a match plot: inliers green, others red; at most ``max_lines`` lines (seeded subset).

    keypoints*: (M, 2) matched positions in hloc's pixel convention (top-left pixel centre at 0,0).
    """
    scale0, scale1 = height / image0.shape[0], height / image1.shape[0]
    left = Image.fromarray(image0).convert("RGB").resize((round(image0.shape[1] * scale0), height))
    right = Image.fromarray(image1).convert("RGB").resize((round(image1.shape[1] * scale1), height))
    canvas = Image.new("RGB", (left.width + right.width, height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    draw = ImageDraw.Draw(canvas)
    inliers = np.ones(len(keypoints0), bool) if inliers is None else np.asarray(inliers, bool)
    order = np.random.default_rng(seed).permutation(len(keypoints0))[:max_lines]
    for index in order:
        x0, y0 = (keypoints0[index] + 0.5) * scale0
        x1, y1 = (keypoints1[index] + 0.5) * scale1
        colour = (40, 220, 60) if inliers[index] else (230, 40, 40)
        draw.line([(x0, y0), (x1 + left.width, y1)], fill=colour, width=1)
    draw.text((5, 5), f"{int(inliers.sum())} / {len(inliers)} matches", fill=(255, 255, 0))
    canvas.save(path)
