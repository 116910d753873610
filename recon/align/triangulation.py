"""Multi-view triangulation and the observation tests of the refinement loop, batched over tracks.

* :func:`triangulate` - the point closest to all of its rays (the multi-view midpoint:
  ``sum_e w_e (I - v_e v_e^T) (X - c_e) = 0``, one 3x3 system per track), reweighted (Cauchy on
  the angle between ray and point) so that a wrong observation does not drag its track.
* :func:`triangulate_by_consensus` - :func:`triangulate`, then the tracks whose point fewer than
  half of their rays agree with again, started from the two-ray point that most of their rays
  agree with (:func:`consensus_points`): the reweighting then keeps the larger part of a track
  that a wrong match merged with another (COLMAP triangulates each track by RANSAC over its views
  for the same reason).
* :func:`reprojection_errors` - pixel error of every observation under COLMAP's camera models
  (the BA engine's projection).
* :func:`triangulation_angles` - per track, the largest angle at the point between the ray of
  its first observation and any other ray (a lower bound of the largest pairwise angle, and at
  least half of it).
"""
from __future__ import annotations

import torch

from ..ba import Problem
from ..ba.cameras import MIN_DEPTH, model_groups, project_groups


def ray_angles(points: torch.Tensor, centres: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
    """(M,) angle in radians between each ray (M, 3) unit and the direction to its point; points, centres (M, 3)."""
    direction = points - centres
    cos = (direction * rays).sum(1) / direction.norm(dim=1).clamp_min(1e-300)
    return torch.arccos(cos.clamp(-1.0, 1.0))


def triangulate(centres: torch.Tensor, rays: torch.Tensor, track: torch.Tensor, num_tracks: int,
                iterations: int = 2, scale_deg: float = 1.0, start: torch.Tensor | None = None) -> torch.Tensor:
    """(T, 3) points from rays: centres (M, 3) camera centre of each observation, rays (M, 3)
    unit world directions, track (M,) track index. ``iterations`` Cauchy reweightings with
    angle scale ``scale_deg``, the first from the angles to ``start`` (T, 3) when given (NaN rows:
    no start, equal weights), else from equal weights. Tracks whose rays are parallel get a
    least-squares point far away along them (filtered later by their triangulation angle)."""
    eye = torch.eye(3, dtype=rays.dtype, device=rays.device)
    projector = eye - rays[:, :, None] * rays[:, None, :]
    scale = torch.deg2rad(torch.tensor(scale_deg, dtype=rays.dtype))
    weights = torch.ones(len(rays), dtype=rays.dtype, device=rays.device)
    if start is not None:
        started = 1.0 / (1.0 + (ray_angles(start[track], centres, rays) / scale) ** 2)
        weights = torch.where(torch.isnan(started), weights, started)
    points = None
    for _ in range(iterations + 1):
        A = torch.zeros(num_tracks, 3, 3, dtype=rays.dtype, device=rays.device)
        A.index_add_(0, track, weights[:, None, None] * projector)
        b = torch.zeros(num_tracks, 3, dtype=rays.dtype, device=rays.device)
        b.index_add_(0, track, weights[:, None] * (projector @ centres[:, :, None])[:, :, 0])
        A = A + 1e-12 * A.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] * eye
        points = torch.linalg.solve(A, b)
        angle = ray_angles(points.index_select(0, track), centres, rays)  # points[track], faster on CPU
        weights = 1.0 / (1.0 + (angle / scale) ** 2)
    return points


def triangulate_by_consensus(centres: torch.Tensor, rays: torch.Tensor, track: torch.Tensor, num_tracks: int,
                             max_angle_deg: float) -> torch.Tensor:
    """(T, 3) points as :func:`triangulate` gives them, except for the tracks where fewer than half
    of the rays pass within ``max_angle_deg`` of it: those again from :func:`consensus_points`,
    reweighted with that angle as the Cauchy scale (with the default 1 deg, the other part's
    rays, 20 deg off in the test, still pull the point by 0.15 deg, close to a 4 px filter).

    Only the doubtful tracks: the consensus scores up to eight hypotheses against every ray of a
    track, three times the work of the whole triangulation (4.3 s against 1.6 s for the 1.9M
    observations of the 3,000-image synthetic survey), and a consistent track gains nothing."""
    points = triangulate(centres, rays, track, num_tracks)
    max_angle = torch.deg2rad(torch.tensor(max_angle_deg, dtype=rays.dtype))
    inside = (ray_angles(points.index_select(0, track), centres, rays) < max_angle).to(rays.dtype)
    agreeing = torch.zeros(num_tracks, dtype=rays.dtype, device=rays.device).index_add_(0, track, inside)
    doubtful = agreeing < 0.5 * torch.bincount(track, minlength=num_tracks)
    rows = doubtful[track]
    if bool(rows.any()):
        ids, local = torch.unique(track[rows], return_inverse=True)
        start = consensus_points(centres[rows], rays[rows], local, len(ids), max_angle_deg)
        points[ids] = triangulate(centres[rows], rays[rows], local, len(ids), scale_deg=max_angle_deg, start=start)
    return points


def consensus_points(centres: torch.Tensor, rays: torch.Tensor, track: torch.Tensor, num_tracks: int,
                     max_angle_deg: float, hypotheses: int = 8, chunk: int = 1 << 22) -> torch.Tensor:
    """(T, 3) per track the hypothesis most of its rays pass within ``max_angle_deg`` of (NaN for
    tracks of fewer than two rays); centres, rays (M, 3), track (M,) as for :func:`triangulate`.

    The hypotheses of a track of L rays are the two-ray midpoints of its k-th and
    (k + ceil(L/2))-th ray (in observation order), k < min(L, ``hypotheses``): when a wrong match
    joins two points' tracks, at least one such pair lies on the larger part unless it holds
    few of the rays (a 5 + 4 split: 28 % per pair, 7 % that none of 8 does). Scored against every
    ray of the track, ``chunk`` (hypothesis, ray) pairs at a time."""
    order = torch.argsort(track, stable=True)
    sorted_track = track[order]
    lengths = torch.bincount(track, minlength=num_tracks)
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(len(track), device=track.device) - starts[sorted_track]
    length = lengths[sorted_track]
    chosen = (position < hypotheses) & (length >= 2)
    first = order[chosen]
    hypothesis_track = sorted_track[chosen]
    length = length[chosen]
    partner = order[starts[hypothesis_track] + (position[chosen] + (length + 1) // 2) % length]
    ends = torch.cat([first, partner])  # each hypothesis a track of two rays, triangulated unweighted
    midpoints = triangulate(centres[ends], rays[ends], torch.arange(len(first), device=track.device).repeat(2),
                            len(first), iterations=0)
    score = torch.zeros(len(first), dtype=torch.long, device=track.device)
    max_angle = torch.deg2rad(torch.tensor(max_angle_deg, dtype=rays.dtype))
    pairs_before = torch.cumsum(length, 0) - length  # (hypothesis, ray) pairs before each hypothesis
    per_block = max(1, chunk // max(int(lengths.max()), 1))
    for begin in range(0, len(first), per_block):  # blocks of hypotheses: bounded memory
        block = torch.arange(begin, min(begin + per_block, len(first)), device=track.device)
        hypothesis = torch.repeat_interleave(block, length[block])
        offset = torch.arange(len(hypothesis), device=track.device) - torch.repeat_interleave(
            pairs_before[block] - pairs_before[block[0]], length[block])
        ray = order[starts[hypothesis_track[hypothesis]] + offset]
        inside = ray_angles(midpoints[hypothesis], centres[ray], rays[ray]) < max_angle
        score.index_add_(0, hypothesis, inside.long())
    best = torch.full((num_tracks,), -1, dtype=torch.long, device=track.device)
    best.scatter_reduce_(0, hypothesis_track, score, reduce="amax")
    index = torch.full((num_tracks,), len(first), dtype=torch.long, device=track.device)
    winners = torch.nonzero(score == best[hypothesis_track]).flatten()
    index.scatter_reduce_(0, hypothesis_track[winners], winners, reduce="amin")
    points = torch.full((num_tracks, 3), float("nan"), dtype=rays.dtype, device=rays.device)
    has = index < len(first)
    points[has] = midpoints[index[has]]
    return points


def reprojection_errors(problem: Problem) -> torch.Tensor:
    """(M,) pixel distance between every observation and its point's projection; ``inf`` behind the
    camera (depth below :data:`recon.ba.cameras.MIN_DEPTH`, where BA gives a zero residual)."""
    R = problem.rotations[problem.obs_image]
    t = problem.translations[problem.obs_image]
    p_cam = (R @ problem.points[problem.obs_point][:, :, None])[:, :, 0] + t
    camera = problem.image_camera[problem.obs_image]
    xy = project_groups(model_groups(problem.camera_models, camera), problem.camera_params[camera], p_cam,
                        with_jac=False)
    errors = (xy - problem.obs_xy).norm(dim=1)
    return torch.where(p_cam[:, 2] >= MIN_DEPTH, errors, torch.full_like(errors, float("inf")))


def triangulation_angles(points: torch.Tensor, centres: torch.Tensor, track: torch.Tensor, num_tracks: int) -> torch.Tensor:
    """(T,) degrees (0 for tracks without observations); see the module docstring.

    points (T, 3); centres (M, 3) camera centre per observation; track (M,) track index.
    """
    direction = points[track] - centres
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-300)
    rows = torch.arange(len(track), device=track.device)
    first = torch.full((num_tracks,), len(track), dtype=torch.long, device=track.device)
    first.scatter_reduce_(0, track, rows, reduce="amin")
    reference = direction[first[track]]
    cos = (direction * reference).sum(1).clamp(-1.0, 1.0)
    angles = torch.zeros(num_tracks, dtype=points.dtype, device=points.device)
    angles.scatter_reduce_(0, track, torch.rad2deg(torch.arccos(cos)), reduce="amax")
    return angles
