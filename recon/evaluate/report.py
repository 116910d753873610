"""Evaluate a COLMAP model against ground truth: one JSON-ready dict, a terminal table, a JSON file.

The pose measures (AUC, RRA, RTA, mAA) are defined in :mod:`recon.evaluate.metrics`. Besides them:

* Registration: a ground-truth image is registered when the model has an image with the same
  name and a pose. Model images without ground truth are ignored (and counted).
* Camera-centre error: the estimated centres of the registered images are mapped onto the
  ground-truth centres by the least-squares similarity (:func:`~recon.evaluate.geometry.umeyama`,
  not robust: a few wild cameras pull the alignment), then the distance of each aligned centre to
  its ground truth, in ground-truth units; ``*_relative`` divides by the scene extent, the
  diagonal of the bounding box of all ground-truth camera centres. Needs two registered images.
* Focal error: ``|f_est - f_gt| / f_gt`` per registered image, with ``f`` the mean of the focal
  parameters of the camera model (fx and fy, or the single f of SIMPLE_* models); an estimated
  camera of another image size is first scaled to the ground-truth size (fx by the width ratio,
  fy by the height ratio).

Values that are undefined (no registered image, no registered pair) are ``None``, so the dict is
strict JSON.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from ..datasets.ground_truth import GroundTruth, load_ground_truth
from .geometry import extent, umeyama
from .metrics import (
    AUC_THRESHOLDS,
    MAA_MAX_THRESHOLD,
    RRA_RTA_THRESHOLD,
    PairErrors,
    accuracy,
    mean_average_accuracy,
    pair_errors,
    pose_auc,
)


def load_model(path: str | Path) -> pycolmap.Reconstruction:
    """A COLMAP model folder (text or binary), or a recon output folder holding ``sparse/0``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    for folder in (path, path / "sparse" / "0"):
        if any((folder / f"images{ext}").is_file() and (folder / f"cameras{ext}").is_file() for ext in (".txt", ".bin")):
            return pycolmap.Reconstruction(str(folder))
    raise ValueError(f"{path}: not a COLMAP model (no cameras and images .txt/.bin here or in sparse/0)")


def evaluate(
    model: pycolmap.Reconstruction | str | Path,
    gt: GroundTruth | str | Path,
    sign_ambiguous: bool = False,
) -> dict:
    """Compare a model with ground truth; returns the JSON-ready result (see the module docstrings).

    Keys: ``num_images_gt``, ``num_registered``, ``registration_rate``, ``num_model_images``,
    ``num_model_images_not_in_gt``, ``num_pairs``, ``num_pairs_registered``,
    ``translation_sign_ambiguous``, ``auc`` ({"1", "5", "10", "20"} -> fraction), ``rra15``,
    ``rta15``, ``maa30``, ``rotation_error_median``, ``translation_error_median``,
    ``pose_error_median`` (over pairs of registered images), ``pair_errors`` (median / mean / max
    of each), ``center_error_median``, ``center_error_mean``, ``center_error_median_relative``,
    ``scene_extent``, ``sim3`` (the alignment), ``focal_error_median``, ``focal_error_mean``,
    ``per_image`` (name -> registered, center_error, focal_error).
    """
    model = model if isinstance(model, pycolmap.Reconstruction) else load_model(model)
    gt = gt if isinstance(gt, GroundTruth) else load_ground_truth(gt)
    if len(gt) < 2:
        raise ValueError(f"ground truth {gt.source!r} has {len(gt)} image(s); pairs need at least 2")
    estimated = {image.name: image for image in model.images.values() if image.has_pose}
    names = gt.names
    registered = np.array([name in estimated for name in names])
    if estimated and not registered.any():
        raise ValueError(
            f"none of the model's {len(estimated)} registered images is in the ground truth (model: "
            f"{sorted(estimated)[:3]}, ground truth: {names[:3]}); names must be relative to the image folder")

    R_est, t_est = _estimated_poses(names, estimated)
    centers_gt = gt.centers()
    centers_est = -np.einsum("nba,nb->na", R_est, t_est)
    extent_gt = extent(centers_gt)
    errors = pair_errors(gt.rotations(), gt.translations(), R_est, t_est, registered,
                         extent_gt, extent(centers_est[registered]), sign_ambiguous)
    pose = errors.pose

    center_errors, sim3 = _center_errors(centers_est, centers_gt, registered)
    focal_errors = np.array([
        _focal_error(model.cameras[estimated[name].camera_id], gt[name].camera) if reg else np.nan
        for name, reg in zip(names, registered)])
    summary = _pair_summary(errors)
    center_median = _median(center_errors[registered])
    return {
        "num_images_gt": len(names),
        "num_registered": int(registered.sum()),
        "registration_rate": float(registered.mean()),
        "num_model_images": len(estimated),
        "num_model_images_not_in_gt": len(set(estimated) - set(names)),
        "num_pairs": len(pose),
        "num_pairs_registered": int(errors.registered.sum()),
        "translation_sign_ambiguous": sign_ambiguous,
        "auc": {str(t): value for t, value in zip(AUC_THRESHOLDS, pose_auc(pose, AUC_THRESHOLDS))},
        f"rra{RRA_RTA_THRESHOLD:.0f}": accuracy(errors.rotation, RRA_RTA_THRESHOLD),
        f"rta{RRA_RTA_THRESHOLD:.0f}": accuracy(errors.translation, RRA_RTA_THRESHOLD),
        f"maa{MAA_MAX_THRESHOLD}": mean_average_accuracy(pose, MAA_MAX_THRESHOLD),
        "rotation_error_median": summary["rotation"]["median"],
        "translation_error_median": summary["translation"]["median"],
        "pose_error_median": summary["pose"]["median"],
        "pair_errors": summary,
        "center_error_median": center_median,
        "center_error_mean": _mean(center_errors[registered]),
        "center_error_median_relative": (center_median / extent_gt
                                         if center_median is not None and extent_gt > 0 else None),
        "scene_extent": extent_gt,
        "sim3": None if sim3 is None else {"scale": sim3.scale, "rotation": sim3.rotation.tolist(),
                                          "translation": sim3.translation.tolist()},
        "focal_error_median": _median(focal_errors[registered]),
        "focal_error_mean": _mean(focal_errors[registered]),
        "per_image": {
            name: {"registered": bool(reg), "center_error": _float(c), "focal_error": _float(f)}
            for name, reg, c, f in zip(names, registered, center_errors, focal_errors)},
    }


def format_table(result: dict) -> str:
    """A readable summary of :func:`evaluate`'s result for the terminal."""
    def num(value: float | None, fmt: str = ".3f", suffix: str = "") -> str:
        return "n/a" if value is None else f"{value:{fmt}}{suffix}"

    auc = " / ".join(num(result["auc"][key]) for key in result["auc"])
    relative = result["center_error_median_relative"]
    center = num(result["center_error_median"], ".4g")
    if relative is not None:
        center += f"  ({100 * relative:.3g}% of extent {result['scene_extent']:.4g})"
    focal = result["focal_error_median"]
    sign = "  (sign-ambiguous)" if result["translation_sign_ambiguous"] else ""
    rows = [
        ("images registered", f"{result['num_registered']} / {result['num_images_gt']}"
                              f"  ({100 * result['registration_rate']:.1f}%)"),
        ("pairs (both registered)", f"{result['num_pairs']}  ({result['num_pairs_registered']})"),
        (f"AUC @ {' / '.join(result['auc'])} deg", auc),
        ("RRA@15 / RTA@15", f"{num(result['rra15'])} / {num(result['rta15'])}"),
        ("mAA(30)", num(result["maa30"])),
        ("rotation error median", num(result["rotation_error_median"], ".3f", " deg")),
        ("translation error median", num(result["translation_error_median"], ".3f", " deg") + sign),
        ("camera centre error median", center),
        ("focal error median", "n/a" if focal is None else f"{100 * focal:.3g}%"),
    ]
    if result["num_model_images_not_in_gt"]:
        rows.append(("model images not in GT", str(result["num_model_images_not_in_gt"])))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _estimated_poses(names: list[str], estimated: dict[str, pycolmap.Image]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 3), (N, 3) cam_from_world of the model in ``names`` order; identity where unregistered."""
    R = np.tile(np.eye(3), (len(names), 1, 1))
    t = np.zeros((len(names), 3))
    for k, name in enumerate(names):
        if name in estimated:
            pose = estimated[name].cam_from_world()
            R[k] = pose.rotation.matrix()
            t[k] = pose.translation
    return R, t


def _center_errors(centers_est: np.ndarray, centers_gt: np.ndarray, registered: np.ndarray):
    """(N,) distances after the Umeyama alignment (NaN where unregistered or undefined) and the Sim3."""
    errors = np.full(len(centers_gt), np.nan)
    src = centers_est[registered]
    if len(src) < 2 or np.all(src == src[0]):
        return errors, None
    sim3 = umeyama(src, centers_gt[registered])
    errors[registered] = np.linalg.norm(sim3.apply(src) - centers_gt[registered], axis=1)
    return errors, sim3


def _focal_error(est: pycolmap.Camera, gt: pycolmap.Camera) -> float:
    """Relative error of the mean focal length, the estimate rescaled to the ground-truth size."""
    f_est = _focal_xy(est) * np.array([gt.width / est.width, gt.height / est.height])
    f_gt = _focal_xy(gt)
    return float(abs(f_est.mean() - f_gt.mean()) / f_gt.mean())


def _focal_xy(camera: pycolmap.Camera) -> np.ndarray:
    """(2,) fx, fy (equal for single-focal models)."""
    focal = np.asarray(camera.params)[list(camera.focal_length_idxs())]
    return np.broadcast_to(focal, (2,)) if focal.size == 1 else focal


def _pair_summary(errors: PairErrors) -> dict:
    """Median / mean / max of the rotation, translation and pose errors of registered pairs."""
    out = {}
    for key, values in (("rotation", errors.rotation), ("translation", errors.translation), ("pose", errors.pose)):
        values = values[errors.registered]
        out[key] = {"median": _median(values), "mean": _mean(values),
                    "max": float(values.max()) if values.size else None}
    return out


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def _float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
