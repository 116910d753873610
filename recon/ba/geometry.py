"""Rotation helpers (batched, float64): so(3) exponential and logarithm."""
from __future__ import annotations

import torch


def skew(w: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> (N, 3, 3) cross-product matrices, ``skew(w) @ x == cross(w, x)``."""
    zero = torch.zeros_like(w[:, 0])
    wx, wy, wz = w.unbind(-1)
    return torch.stack([torch.stack([zero, -wz, wy], -1),
                        torch.stack([wz, zero, -wx], -1),
                        torch.stack([-wy, wx, zero], -1)], -2)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: (N, 3) rotation vectors (angle-axis) -> (N, 3, 3) rotation matrices.

    Uses the Taylor series below 1e-4 rad so tiny LM updates stay exact to float64 precision.
    """
    theta2 = (w * w).sum(-1)
    theta = torch.sqrt(theta2)
    small = theta < 1e-4
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe)) / (safe * safe))
    k = skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(k)
    return eye + a[:, None, None] * k + b[:, None, None] * (k @ k)


def so3_log(rot: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotation matrices -> (N, 3) angle-axis vectors (angles in [0, pi])."""
    trace = rot[:, 0, 0] + rot[:, 1, 1] + rot[:, 2, 2]
    cos = ((trace - 1.0) * 0.5).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    vee = torch.stack([rot[:, 2, 1] - rot[:, 1, 2], rot[:, 0, 2] - rot[:, 2, 0],
                       rot[:, 1, 0] - rot[:, 0, 1]], -1)
    sin = torch.sin(theta)
    small = theta < 1e-6
    factor = torch.where(small, 0.5 + theta * theta / 12.0, theta / (2.0 * torch.where(small, 1.0, sin)))
    w = vee * factor[:, None]
    # Near pi, sin -> 0 and vee loses the axis: take it from the symmetric part instead.
    near_pi = theta > torch.pi - 1e-3
    if bool(near_pi.any()):
        sym = (rot[near_pi] + rot[near_pi].transpose(1, 2)) * 0.5 - cos[near_pi, None, None] * torch.eye(
            3, dtype=rot.dtype, device=rot.device)
        col = sym.diagonal(dim1=1, dim2=2).argmax(-1)
        axis = sym[torch.arange(sym.shape[0], device=rot.device), :, col]
        axis = axis / axis.norm(dim=-1, keepdim=True)
        sign = torch.sign((axis * vee[near_pi]).sum(-1))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        w[near_pi] = axis * (sign * theta[near_pi])[:, None]
    return w
