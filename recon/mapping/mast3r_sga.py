"""MASt3R-SfM's mapper: the sparse global alignment (:mod:`recon.align`) of the MASt3R stage's
canonical pointmaps and anchor matches, then a bundle adjustment with recon's BA engine.

It reads what :mod:`recon.match.mast3r` left in the output folder (``mast3r-canonical.h5``,
``matches.h5``, ``pairs.txt``) and, from the database, the image ids and cameras: images that
share a COLMAP camera share intrinsics in the alignment. The alignment uses MASt3R's raw anchor
matches weighted by their confidence (as MASt3R-SfM does), not COLMAP's verified subset; the
final BA uses a Cauchy loss so remaining outliers do not pull the model, and points still
reprojecting worse than ``max_reproj_error`` pixels are dropped afterwards.

``depth_prior_weight > 0`` adds the alignment's depth-prior term (:mod:`recon.align.sparse_ga`,
step 5) with the priors stage's metric depth maps (``priors-depth.h5``, from ``priors.name=
depth_pro`` or ``ground_truth``) sampled at every anchor. On a synthetic three-view scene with
10 % pointmap depth noise, exact prior depths at weight 10 cut the worst rotation error from 1.65
to 0.98 degree and the focal error from 1.8 % to 0.6 % (tests/test_sparse_ga.py); 0 turns it off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
import torch

from ..align import AlignmentInput, AlignmentOptions, sparse_global_alignment
from ..align.model import ModelLayout, to_reconstruction
from ..ba import BAOptions, adjust
from ..io import h5
from ..io.pairs import read_pairs
from ..match.mast3r import CANONICAL_FILE, read_canonical
from ..priors.depth import DEPTH_FILE, H5DepthSource, sample_depth
from . import MAPPERS


@MAPPERS.register("mast3r_sga", lr1=0.2, niter1=500, lr2=0.02, niter2=500, matching_conf_thr=5.0, opt_pp=False,
                  opt_depth=True, bundle_adjustment=True, ba_loss="cauchy", ba_loss_scale=1.0, ba_iterations=100,
                  max_reproj_error=4.0, depth_prior_weight=0.0)
def mast3r_sga(database_path: Path, image_dir: Path, output_dir: Path, conf: dict[str, Any],
               device: torch.device, seed: int = 0) -> pycolmap.Reconstruction:
    """Sparse global alignment + BA. ``opt_pp`` is off by default (unlike the reference): on exact
    synthetic data a free principal point drifted by ~2 px in the fine stage, tilting cameras by
    ~0.5 degree (the Adam steps never settle on the weakly constrained pp), and COLMAP's mappers
    keep it fixed too. The alignment is deterministic (no randomness; ``seed`` is unused)."""
    canonical_path = output_dir / CANONICAL_FILE
    if not canonical_path.exists():
        raise RuntimeError(f"mast3r_sga needs {canonical_path} from the MASt3R matcher (matcher.name=mast3r)")
    data, layout = read_alignment_input(database_path, canonical_path, output_dir / "matches.h5",
                                        read_pairs(output_dir / "pairs.txt"))
    if conf["depth_prior_weight"] > 0:
        data.prior_depth = anchor_prior_depths(output_dir / DEPTH_FILE, layout.image_names, data)
    options = AlignmentOptions(lr1=conf["lr1"], niter1=conf["niter1"], lr2=conf["lr2"], niter2=conf["niter2"],
                               matching_conf_thr=conf["matching_conf_thr"], opt_pp=conf["opt_pp"],
                               opt_depth=conf["opt_depth"], depth_weight=conf["depth_prior_weight"])
    result = sparse_global_alignment(data.to(device), options)
    model = to_reconstruction(data, result, layout)
    if conf["bundle_adjustment"] and model.num_points3D():
        adjust(model, BAOptions(loss=conf["ba_loss"], loss_scale=conf["ba_loss_scale"],
                                max_num_iterations=conf["ba_iterations"], device=str(device)))
        model.update_point_3d_errors()
    if conf["max_reproj_error"] > 0:
        drop_inaccurate_points(model, conf["max_reproj_error"])
    return model


def drop_inaccurate_points(model: pycolmap.Reconstruction, max_error: float) -> int:
    """Delete 3D points whose mean reprojection error exceeds ``max_error`` pixels (COLMAP's
    ``filter_max_reproj_error``, 4 px by default); return how many."""
    model.update_point_3d_errors()
    ids = np.fromiter(model.points3D.keys(), np.int64, model.num_points3D())
    errors = np.fromiter((point.error for point in model.points3D.values()), np.float64, model.num_points3D())
    bad = ids[~(errors <= max_error)]  # NaN errors count as bad
    for point_id in bad:  # pycolmap deletes one point at a time
        model.delete_point3D(int(point_id))
    return len(bad)


def read_alignment_input(database_path: Path, canonical_path: Path, matches_path: Path,
                         pairs: list[tuple[str, str]]) -> tuple[AlignmentInput, ModelLayout]:
    """Anchors of every paired image (canonical file; keypoints moved to COLMAP's pixel convention),
    their matches (matches.h5, confidence = matching score) and the database's ids and cameras."""
    with pycolmap.Database.open(str(database_path)) as db:
        db_images = {image.name: image for image in db.read_all_images()}
        cameras = {camera.camera_id: camera for camera in db.read_all_cameras()}
    names = sorted({n for pair in pairs for n in pair})
    missing = [n for n in names if n not in db_images]
    if missing:
        raise RuntimeError(f"images {missing[:5]} of pairs.txt are not in {database_path}")
    camera_ids = sorted({db_images[n].camera_id for n in names})
    camera_index = {camera_id: c for c, camera_id in enumerate(camera_ids)}
    maps = [read_canonical(canonical_path, n) for n in names]
    counts = np.array([len(m["points"]) for m in maps])
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    index = {n: k for k, n in enumerate(names)}
    match0, match1, scores = [], [], []
    for name0, name1 in pairs:  # one h5 read per pair
        matches, score = h5.read_matches(matches_path, name0, name1)
        match0.append(offsets[index[name0]] + matches[:, 0])
        match1.append(offsets[index[name1]] + matches[:, 1])
        scores.append(np.asarray(score, np.float32))
    data = AlignmentInput(
        keypoints=torch.from_numpy(np.concatenate([m["keypoints"] for m in maps]) + 0.5).float(),
        points=torch.from_numpy(np.concatenate([m["points"] for m in maps])).float(),
        confidence=torch.from_numpy(np.concatenate([m["confidence"] for m in maps])).float(),
        anchor_image=torch.from_numpy(np.repeat(np.arange(len(names)), counts)),
        image_size=torch.tensor([[cameras[db_images[n].camera_id].width, cameras[db_images[n].camera_id].height]
                                 for n in names], dtype=torch.float32),
        image_camera=torch.tensor([camera_index[db_images[n].camera_id] for n in names]),
        match0=torch.from_numpy(np.concatenate(match0)).long(), match1=torch.from_numpy(np.concatenate(match1)).long(),
        match_conf=torch.from_numpy(np.concatenate(scores)))
    layout = ModelLayout(names, [db_images[n].image_id for n in names], camera_ids,
                         [cameras[c].model.name for c in camera_ids])
    return data, layout


def anchor_prior_depths(depth_path: Path, names: list[str], data: AlignmentInput) -> torch.Tensor:
    """(A,) the priors stage's metric depth at every anchor (its pixel's value; NaN where the map
    has none). ``names[k]`` is image k of ``data``, whose anchors are contiguous (as
    :func:`read_alignment_input` lays them out)."""
    if not depth_path.exists():
        raise RuntimeError(f"mast3r_sga: depth_prior_weight needs the depth maps of a depth priors choice "
                           f"(priors.name=depth_pro or ground_truth); {depth_path} is missing")
    source = H5DepthSource(depth_path)
    keypoints = data.keypoints.double().cpu().numpy()
    bounds = np.searchsorted(data.anchor_image.cpu().numpy(), np.arange(len(names) + 1))
    depth = np.concatenate([sample_depth(source.depth(name), keypoints[start:end])  # one map per image
                            for name, start, end in zip(names, bounds[:-1], bounds[1:])])
    return torch.from_numpy(depth).float()
