"""Nearest-neighbour descriptor matching in torch, batched over pairs, on any device.

The tests are hloc's (``NearestNeighbor``): on unit descriptors the squared L2 distance is
``2 - 2 * cosine``; Lowe's ratio test compares the best and second-best distances, the distance
test bounds the best one, and the mutual check keeps i->j only when j->i. Defaults follow COLMAP's
SIFT matcher (ratio 0.8, distance 0.7, cross check), which measures the same quantities as angles:
for the small distances that matter the two agree to within a few percent.
"""
from __future__ import annotations

import torch

from .base import BaseModel


def nearest_neighbours(similarity: torch.Tensor, ratio_threshold: float | None,
                       distance_threshold: float | None, valid: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best match per row of ``similarity`` (B, N, M) with ratio and distance tests.

    ``valid`` (B, M) marks real columns (padding excluded). Returns indices (B, N), -1 where a
    test fails, and cosine scores mapped to [0, 1] as ``(1 + cos) / 2``.
    """
    if valid is not None and not bool(valid.all()):
        similarity = similarity.masked_fill(~valid[:, None, :], -2.0)
    k = 2 if (ratio_threshold is not None and similarity.shape[-1] > 1) else 1
    top_sim, top_idx = similarity.topk(k, dim=-1)
    distance_sq = (2.0 - 2.0 * top_sim).clamp(min=0.0)
    keep = top_sim[..., 0] > -2.0
    if k == 2:
        keep &= distance_sq[..., 0] <= ratio_threshold**2 * distance_sq[..., 1]
    if distance_threshold is not None:
        keep &= distance_sq[..., 0] <= distance_threshold**2
    indices = torch.where(keep, top_idx[..., 0], torch.full_like(top_idx[..., 0], -1))
    scores = torch.where(keep, (top_sim[..., 0] + 1.0) / 2.0, torch.zeros_like(top_sim[..., 0]))
    return indices, scores


def mutual_check(matches0: torch.Tensor, matches1: torch.Tensor) -> torch.Tensor:
    """Keep i -> j only where j -> i (both (B, N) / (B, M) index tensors, -1 = none)."""
    batch = torch.arange(matches0.shape[0], device=matches0.device)[:, None]
    back = matches1[batch, matches0.clamp(min=0)]
    indices = torch.arange(matches0.shape[1], device=matches0.device)[None]
    return torch.where((matches0 > -1) & (back == indices), matches0, torch.full_like(matches0, -1))


class NearestNeighbor(BaseModel):
    """Inputs ``descriptors0`` (B, N, D), ``descriptors1`` (B, M, D), unit rows; optional
    ``mask0`` (B, N) / ``mask1`` (B, M) marking real (non-padded) keypoints when pairs of different
    sizes are batched. Outputs ``matches0`` (B, N) (-1 = none) and ``matching_scores0`` (B, N)."""

    default_conf = {"ratio_threshold": 0.8, "distance_threshold": 0.7, "mutual_check": True}
    required_inputs = ("descriptors0", "descriptors1")
    kind = "matcher"
    supports_padding = True

    def forward(self, data: dict) -> dict:
        self.check_inputs(data)
        desc0, desc1 = data["descriptors0"], data["descriptors1"]
        if desc0.shape[1] == 0 or desc1.shape[1] == 0:
            empty = torch.full(desc0.shape[:2], -1, dtype=torch.long, device=desc0.device)
            return {"matches0": empty, "matching_scores0": torch.zeros(desc0.shape[:2], device=desc0.device)}
        similarity = torch.bmm(desc0.float(), desc1.float().transpose(1, 2))  # bmm: 2x einsum's speed here
        ratio = self.conf["ratio_threshold"]
        distance = self.conf["distance_threshold"]
        matches0, scores0 = nearest_neighbours(similarity, ratio, distance, data.get("mask1"))
        if self.conf["mutual_check"]:
            # top-k along a contiguous last axis is ~7x faster than along the strided one
            transposed = similarity.transpose(1, 2).contiguous()
            matches1, _ = nearest_neighbours(transposed, ratio, distance, data.get("mask0"))
            matches0 = mutual_check(matches0, matches1)
        if "mask0" in data:
            matches0 = torch.where(data["mask0"], matches0, torch.full_like(matches0, -1))
        scores0 = torch.where(matches0 > -1, scores0, torch.zeros_like(scores0))
        return {"matches0": matches0, "matching_scores0": scores0}
