"""The mathematical pieces of RoMa / DKM dense matching, as plain functions.

Coordinates follow the official code: normalised image coordinates in [-1, 1] with
``align_corners=False`` (pixel centres at ``-1 + (2i + 1) / n``), channel order (x, y).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pixel_grid(b: int, h: int, w: int, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised coordinates of the pixel centres, (B, 2, H, W) with channel 0 = x, 1 = y."""
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=device, dtype=dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y))[None].expand(b, 2, h, w)


def cosine_kernel(x: torch.Tensor, y: torch.Tensor, temperature: float, eps: float = 1e-6) -> torch.Tensor:
    """``exp((cos(x_i, y_j) - 1) / T)`` for x (B, N, D), y (B, M, D) -> (B, N, M).

    The cosine uses ``x.y / (|x| |y| + eps)`` exactly as RoMa's ``CosKernel``.
    """
    cos = torch.einsum("bnd,bmd->bnm", x, y) / (x.norm(dim=-1)[..., None] * y.norm(dim=-1)[:, None] + eps)
    return ((cos - 1.0) / temperature).exp()


def gp_posterior_mean(x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, temperature: float,
                      sigma_noise: float) -> torch.Tensor:
    """Posterior mean of a Gaussian process regressing the embedding ``f`` of image B's positions.

    x (B, N, D) are the query features (image A), y (B, M, D) the support features (image B) at
    which the targets f (B, M, E) are observed. With the cosine kernel K, the mean is
    ``K_xy (K_yy + sigma^2 I)^-1 f`` (B, N, E); it is solved through a Cholesky factorisation
    (what RoMa does at inference) instead of an explicit inverse.
    """
    k_yy = cosine_kernel(y, y, temperature)
    k_xy = cosine_kernel(x, y, temperature)
    noise = sigma_noise * torch.eye(k_yy.shape[-1], device=k_yy.device, dtype=k_yy.dtype)
    chol = torch.linalg.cholesky(k_yy + noise)
    return k_xy @ torch.cholesky_solve(f, chol, upper=False)


def anchor_grid(resolution: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Centres of the ``resolution x resolution`` anchor cells, (resolution^2, 2) as (x, y), row major."""
    centres = torch.linspace(-1 + 1 / resolution, 1 - 1 / resolution, resolution, device=device)
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2)


def cls_to_flow_refine(logits: torch.Tensor) -> torch.Tensor:
    """Turn anchor-classification logits (B, R^2, H, W) into coordinates (B, H, W, 2).

    Soft-argmax restricted to the winning anchor and its four neighbours in the flattened
    row-major anchor list (indices m-1, m, m+1, m-R, m+R, clamped to the valid range, exactly as
    RoMa; at a row end m+-1 therefore reaches the neighbouring row): the anchor centres weighted
    by their softmax probabilities, renormalised over those five.
    """
    b, c, h, w = logits.shape
    res = round(math.sqrt(c))
    anchors = anchor_grid(res, logits.device).to(logits.dtype)
    probs = logits.softmax(dim=1)
    mode = probs.argmax(dim=1)
    index = torch.stack((mode - 1, mode, mode + 1, mode - res, mode + res), dim=1).clamp(0, c - 1)
    weights = torch.gather(probs, 1, index)  # (B, 5, H, W)
    coords = anchors[index]  # (B, 5, H, W, 2)
    return (weights[..., None] * coords).sum(dim=1) / weights.sum(dim=1)[..., None]


def local_window(radius: int, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Offsets of a (2r+1)^2 window of feature-map pixels in normalised units, (K, 2) row major.

    One pixel of an h x w map spans 2/h (y) and 2/w (x) normalised units.
    """
    ys = torch.linspace(-2 * radius / h, 2 * radius / h, 2 * radius + 1, device=device)
    xs = torch.linspace(-2 * radius / w, 2 * radius / w, 2 * radius + 1, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2)


def local_correlation(feature0: torch.Tensor, feature1: torch.Tensor, radius: int, warp: torch.Tensor,
                      max_elements: int = 1 << 26) -> torch.Tensor:
    """Correlation of each pixel of feature0 with feature1 around where the warp sends it.

    feature0, feature1 (B, C, H, W); warp (B, 2, H, W) normalised coordinates into feature1.
    Returns (B, K, H, W), K = (2r+1)^2: ``<f0(p), f1(warp(p) + offset_k)> / sqrt(C)``, with f1
    sampled bilinearly (zero padding, ``align_corners=False``). The window is processed in
    chunks of offsets so that at most ``max_elements`` sampled values exist at once.
    """
    b, c, h, w = feature0.shape
    offsets = local_window(radius, h, w, feature0.device).to(warp.dtype)
    centres = warp.permute(0, 2, 3, 1)  # (B, H, W, 2)
    scaled0 = feature0 / c ** 0.5
    chunk = max(1, max_elements // max(1, b * c * h * w))
    parts = []
    for start in range(0, offsets.shape[0], chunk):
        window = offsets[start:start + chunk]  # (k, 2)
        coords = (centres[:, :, :, None] + window).reshape(b, h, w * window.shape[0], 2)
        sampled = F.grid_sample(feature1, coords.to(feature1.dtype), mode="bilinear", padding_mode="zeros",
                                align_corners=False).reshape(b, c, h, w, window.shape[0])
        parts.append(torch.einsum("bchw,bchwk->bkhw", scaled0, sampled))
    return torch.cat(parts, dim=1)


def kde(x: torch.Tensor, std: float = 0.1, stride: int = 1, chunk: int = 4096) -> torch.Tensor:
    """Gaussian kernel density of each row of x (N, D): ``sum_j exp(-|xi - xj|^2 / 2 std^2)``.

    ``stride`` > 1 sums over every stride-th row only (Tiny RoMa's CPU shortcut). Computed in
    blocks of ``chunk`` rows so memory stays O(chunk * N).
    """
    support = x[::stride]
    return torch.cat([(-torch.cdist(block, support) ** 2 / (2 * std ** 2)).exp().sum(dim=-1)
                      for block in x.split(chunk)])


def sample_matches(matches: torch.Tensor, certainty: torch.Tensor, num: int, threshold: float | None,
                   balanced: bool, generator: torch.Generator | None = None, kde_stride: int = 1
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """RoMa's match sampling: certainty-weighted draws, then thinned to a spatially balanced set.

    matches (..., 4) warp entries ``[xA, yA, xB, yB]``, certainty (...) in [0, 1].
    1. With ``threshold``, every certainty above it counts as 1 (so confident regions are drawn
       uniformly); draw ``4 * num`` (``num`` when not balanced) entries without replacement with
       probability proportional to that weight.
    2. Balanced: estimate the density of the draws in the 4-D match space (Gaussian KDE, std 0.1)
       and draw ``num`` of them with probability ``1 / (1 + density)``, nearly never (1e-7)
       where fewer than 10 neighbours support a match (isolated outliers); ``kde_stride`` as in
       :func:`kde`.
    Returns the sampled matches (M, 4) and their original (un-thresholded) certainties (M,).
    """
    matches, certainty = matches.reshape(-1, 4), certainty.reshape(-1)
    weight = certainty.clone()
    if threshold is not None:
        weight[weight > threshold] = 1
    available = int((weight > 0).sum())
    if available == 0:
        return matches[:0], certainty[:0]
    first = torch.multinomial(weight, min((4 if balanced else 1) * num, available), replacement=False,
                              generator=generator)
    if not balanced:
        return matches[first], certainty[first]
    drawn = matches[first].float()
    density = kde(drawn, std=0.1, stride=kde_stride)
    p = 1 / (density + 1)
    p[density < 10] = 1e-7
    second = first[torch.multinomial(p, min(num, len(first)), replacement=False, generator=generator)]
    return matches[second], certainty[second]


def normalized_to_pixels(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised coordinates (..., 2) (``align_corners=False``) -> pixels of a height x width image.

    Output in hloc's keypoint convention: the centre of the top-left pixel is (0, 0) (the
    official ``to_pixel_coordinates`` puts it at (0.5, 0.5)).
    """
    return torch.stack((width * (xy[..., 0] + 1) / 2, height * (xy[..., 1] + 1) / 2), dim=-1) - 0.5


def pixels_to_normalized(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`normalized_to_pixels`: hloc pixels (..., 2) -> normalised coordinates."""
    return torch.stack((2 * (xy[..., 0] + 0.5) / width - 1, 2 * (xy[..., 1] + 0.5) / height - 1), dim=-1)


def sample_warp(warp: torch.Tensor, certainty: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the points of image A land in image B, read off a dense warp (bilinear, as RoMa's
    ``match_keypoints``).

    warp (H, W, 2) B positions of A's pixels (normalised), certainty (H, W), points (N, 2)
    normalised in A -> positions (N, 2) normalised in B and their certainty (N,).
    """
    grid = points[None, None].to(warp.dtype)  # (1, 1, N, 2)
    positions = F.grid_sample(warp.permute(2, 0, 1)[None], grid, mode="bilinear", align_corners=False)[0, :, 0].T
    score = F.grid_sample(certainty[None, None], grid, mode="bilinear", align_corners=False)[0, 0, 0]
    return positions, score


def mutual_nearest_matches(predicted: torch.Tensor, score: torch.Tensor, keypoints: torch.Tensor,
                           max_distance: float, min_certainty: float, chunk: int = 4096
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Match A's keypoints, transferred to B by a warp, to B's own keypoints (RoMa's rule).

    A keypoint i of A and a keypoint j of B match when j is the nearest B keypoint to i's predicted
    position, i's prediction is the nearest to j among all of A's, they are closer than
    ``max_distance`` and i's certainty exceeds ``min_certainty`` (official defaults 0.005 in
    normalised units, i.e. 0.25% of the image size, and 0). All in B's normalised coordinates.

    predicted (N, 2), score (N,), keypoints (M, 2) -> ``matches0`` (N,) long (-1: unmatched) and
    ``matching_scores0`` (N,) (the certainty of matched keypoints, 0 elsewhere). The distance
    matrix is built ``chunk`` rows at a time, so memory is O(chunk * M), not O(N * M).
    """
    n = predicted.shape[0]
    matches = predicted.new_full((n,), -1, dtype=torch.long)
    scores = predicted.new_zeros(n)
    if n == 0 or keypoints.shape[0] == 0:
        return matches, scores
    keypoints = keypoints.to(predicted.dtype)
    nearest_b = torch.empty(n, dtype=torch.long, device=predicted.device)
    distance_b = torch.empty(n, dtype=predicted.dtype, device=predicted.device)
    nearest_a_distance = predicted.new_full((keypoints.shape[0],), math.inf)
    nearest_a = torch.zeros(keypoints.shape[0], dtype=torch.long, device=predicted.device)
    for start in range(0, n, chunk):
        block = torch.cdist(predicted[start:start + chunk], keypoints)  # (c, M)
        distance_b[start:start + chunk], nearest_b[start:start + chunk] = block.min(dim=1)
        column_min, column_arg = block.min(dim=0)
        closer = column_min < nearest_a_distance  # strict: the first minimum wins, as argmin does
        nearest_a = torch.where(closer, column_arg + start, nearest_a)
        nearest_a_distance = torch.where(closer, column_min, nearest_a_distance)
    index = torch.arange(n, device=predicted.device)
    keep = (nearest_a[nearest_b] == index) & (distance_b < max_distance) & (score > min_certainty)
    matches[keep] = nearest_b[keep]
    scores[keep] = score[keep].to(scores.dtype)
    return matches, scores
