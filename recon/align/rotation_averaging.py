"""Robust rotation averaging: global ``cam_from_world`` rotations from relative ones.

Start: the maximum spanning tree of the view graph (edge weight = number of inliers), rotations
chained outward from its root. Refinement: iteratively reweighted least squares on the Lie
algebra (Chatterjee and Govindu's scheme, as in GLOMAP). With the world-frame update
``R_n <- R_n Exp(x_n)``, a pair ``(i, j)`` with measured ``R_ij = R_j R_i^T`` gives the linear
residual ``x_j - x_i - log(R_j^T R_ij R_i)``; every iteration solves the weighted least-squares
problem, whose normal matrix is the weighted graph Laplacian (the three axes decouple), with the
first image fixed. Weights: L1 (``1 / |r|``) first, then Geman-McClure
(``sigma^2 / (sigma^2 + |r|^2)^2``), which ignores wrong pairs almost completely.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ba.geometry import so3_exp, so3_log
from .spanning_tree import max_spanning_tree


def spanning_tree_rotations(num_images: int, pairs: np.ndarray, rotations: np.ndarray,
                            weights: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations chained along the maximum spanning tree (first connected image = identity).

    pairs: (P, 2) image indices ``(i, j)``; rotations: (P, 3, 3) ``R_ij`` (cam_j_from_cam_i);
    weights: (P,) positive (e.g. inlier counts). Images not connected to the root keep identity.
    """
    root = int(pairs[np.argmax(weights), 0])
    order, parent = max_spanning_tree(pairs, weights, num_images, root)
    edge = {(int(i), int(j)): k for k, (i, j) in enumerate(pairs)}
    result = np.tile(np.eye(3), (num_images, 1, 1))
    for node in order[1:]:  # one step per image
        up = int(parent[node])
        if (up, int(node)) in edge:
            result[node] = rotations[edge[(up, int(node))]] @ result[up]
        else:
            result[node] = rotations[edge[(int(node), up)]].T @ result[up]
    return result


def relative_rotation_errors(global_rotations: torch.Tensor, pairs: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """(P, 3) ``log(R_j^T R_ij R_i)``: the pairs' disagreement with the global rotations (radians, world axes)."""
    Ri, Rj = global_rotations[pairs[:, 0]], global_rotations[pairs[:, 1]]
    return so3_log(Rj.transpose(1, 2) @ rotations @ Ri)


def laplacian_solve(num_images: int, pairs: torch.Tensor, weights: torch.Tensor, rhs_edges: torch.Tensor) -> torch.Tensor:
    """Minimise ``sum_p w_p |x_j - x_i - r_p|^2`` with ``x_0 = 0``; returns x (N, 3).

    pairs: (P, 2); weights: (P,); rhs_edges r: (P, 3). The normal matrix is the weighted graph
    Laplacian (dense N x N, Cholesky), the same for all three columns.
    """
    i, j = pairs[:, 0], pairs[:, 1]
    L = torch.zeros(num_images, num_images, dtype=weights.dtype, device=weights.device)
    L.index_put_((i, i), weights, accumulate=True)
    L.index_put_((j, j), weights, accumulate=True)
    L.index_put_((i, j), -weights, accumulate=True)
    L.index_put_((j, i), -weights, accumulate=True)
    b = torch.zeros(num_images, 3, dtype=weights.dtype, device=weights.device)
    b.index_add_(0, j, weights[:, None] * rhs_edges)
    b.index_add_(0, i, -weights[:, None] * rhs_edges)
    A = L[1:, 1:] + 1e-9 * torch.eye(num_images - 1, dtype=L.dtype, device=L.device)
    chol = torch.linalg.cholesky(A)
    x = torch.zeros_like(b)
    x[1:] = torch.cholesky_solve(b[1:], chol)
    return x


def average_rotations(pairs: np.ndarray, rotations: np.ndarray, initial: np.ndarray, weights: np.ndarray | None = None,
                      device: torch.device | str = "cpu", l1_iterations: int = 10, irls_iterations: int = 30,
                      sigma_deg: float = 5.0, tolerance: float = 1e-7) -> np.ndarray:
    """Robust global rotations (N, 3, 3) cam_from_world, starting from ``initial`` (N, 3, 3).

    pairs: (P, 2) indices into a connected set of images; rotations: (P, 3, 3) ``R_ij``;
    weights: (P,) per-pair confidence multiplied into the robust weights (default 1). Runs
    ``l1_iterations`` of L1-IRLS then ``irls_iterations`` of Geman-McClure IRLS (``sigma_deg``),
    each stopping early when the largest update is below ``tolerance`` radians. float64.
    """
    dev = torch.device(device)
    f64 = dict(dtype=torch.float64, device=dev)
    R = torch.as_tensor(initial, **f64).clone()
    pair_t = torch.as_tensor(pairs, device=dev)
    Rij = torch.as_tensor(rotations, **f64)
    base = torch.ones(len(pairs), **f64) if weights is None else torch.as_tensor(weights, **f64)
    sigma = math.radians(sigma_deg)
    for phase, iterations in (("l1", l1_iterations), ("gm", irls_iterations)):
        for _ in range(iterations):
            residual = relative_rotation_errors(R, pair_t, Rij)
            norm = residual.norm(dim=1)
            if phase == "l1":
                robust = 1.0 / norm.clamp_min(1e-4)
            else:
                robust = sigma ** 2 / (sigma ** 2 + norm ** 2) ** 2
            x = laplacian_solve(len(R), pair_t, base * robust, residual)
            R = R @ so3_exp(x)
            if float(x.norm(dim=1).max()) < tolerance:
                break
    return R.cpu().numpy()


def rotation_consistency(global_rotations: np.ndarray, pairs: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """(P,) angle in degrees between each pair's measured rotation and the one the global rotations imply."""
    residual = relative_rotation_errors(torch.as_tensor(global_rotations), torch.as_tensor(pairs),
                                        torch.as_tensor(rotations))
    return np.degrees(residual.norm(dim=1).numpy())
