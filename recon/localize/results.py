"""hloc's localization results file: ``name qw qx qy qz tx ty tz`` per line.

The pose is COLMAP's ``cam_from_world`` with the quaternion written **w first** (hloc's and
COLMAP's text convention), whereas pycolmap's ``Rotation3d.quat`` is ``[x, y, z, w]``: the two
functions here are the only place that converts. Only localized queries have a line; a failed
query has none (its reason is in ``localization.json``), unlike hloc, which writes the pose of
the first retrieved database image for a failure.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pycolmap


def pose_to_fields(pose: pycolmap.Rigid3d) -> list[float]:
    """``[qw, qx, qy, qz, tx, ty, tz]`` of a cam_from_world pose."""
    x, y, z, w = (float(v) for v in pose.rotation.quat)
    return [w, x, y, z, *(float(v) for v in pose.translation)]


def fields_to_pose(values: list[float] | np.ndarray) -> pycolmap.Rigid3d:
    """Inverse of :func:`pose_to_fields` (the quaternion is normalised)."""
    qw, qx, qy, qz, tx, ty, tz = (float(v) for v in values)
    quat = np.array([qx, qy, qz, qw])
    return pycolmap.Rigid3d(pycolmap.Rotation3d(quat / np.linalg.norm(quat)), np.array([tx, ty, tz]))


def write_results(path: str | os.PathLike, poses: dict[str, pycolmap.Rigid3d]) -> None:
    """One line per pose, in the dict's order, written atomically (shortest exact float repr)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [" ".join([name, *(repr(v) for v in pose_to_fields(pose))]) + "\n" for name, pose in poses.items()]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


def read_results(path: str | os.PathLike) -> dict[str, pycolmap.Rigid3d]:
    """Poses of a results file (hloc's or ours); blank lines and ``#`` comments skipped."""
    poses = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 8:
            raise ValueError(f"{path}:{number}: expected 'name qw qx qy qz tx ty tz', got {line!r}")
        try:
            poses[fields[0]] = fields_to_pose(fields[1:])
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
    return poses
