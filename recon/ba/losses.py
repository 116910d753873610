"""Robust losses with Ceres' definitions and COLMAP's scale convention.

COLMAP's ``loss_function_scale`` is the ``a`` argument of Ceres' ``HuberLoss(a)``,
``SoftLOneLoss(a)`` and ``CauchyLoss(a)``; the cost is ``0.5 * sum rho(s)`` with ``s = ||r||^2``
per observation. With ``b = a^2`` (Ceres, ``loss_function.cc``):

* trivial: ``rho(s) = s``
* huber:   ``rho(s) = s`` for ``s <= b``, else ``2 a sqrt(s) - b``
* soft_l1: ``rho(s) = 2 b (sqrt(1 + s / b) - 1)``
* cauchy:  ``rho(s) = b log(1 + s / b)``

All four are concave in ``s`` (``rho'' <= 0``), so Ceres' residual "corrector" reduces to scaling
the residual and the Jacobian by ``sqrt(rho'(s))``; :func:`evaluate` returns ``rho`` and ``rho'``.
"""
from __future__ import annotations

import torch

LOSSES = ("trivial", "huber", "soft_l1", "cauchy")


def evaluate(name: str, scale: float, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rho(s) and rho'(s) for squared residual norms ``s`` (any shape), Ceres' definitions."""
    if name == "trivial":
        return s, torch.ones_like(s)
    b = scale * scale
    if name == "huber":
        sqrt_s = torch.sqrt(s)
        outlier = s > b
        rho = torch.where(outlier, 2.0 * scale * sqrt_s - b, s)
        rho1 = torch.where(outlier, scale / sqrt_s.clamp_min(torch.finfo(s.dtype).tiny), torch.ones_like(s))
        return rho, rho1
    if name == "soft_l1":
        root = torch.sqrt(1.0 + s / b)
        return 2.0 * b * (root - 1.0), 1.0 / root
    if name == "cauchy":
        return b * torch.log1p(s / b), 1.0 / (1.0 + s / b)
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
