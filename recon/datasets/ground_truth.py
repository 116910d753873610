"""Ground-truth camera poses and intrinsics, loaded from the layouts public benchmarks ship.

Every loader returns a :class:`GroundTruth`: per image name, the COLMAP pose ``cam_from_world``
(``x_cam = R @ x_world + t``) and a ``pycolmap.Camera`` (model, width, height, params in COLMAP's
order). Image names follow recon's convention: the path relative to the image folder, with ``/``
separators, so that a model recon wrote can be matched to its ground truth by name.

Supported layouts (:func:`load_ground_truth` picks one from the path):

* COLMAP model folder (``cameras``/``images`` as ``.txt`` or ``.bin``): registered images only.
* Strecha (EPFL dense MVS benchmark): a folder of ``<image name>.camera`` files. Each holds K
  (3 lines), the radial distortion (1 line, must be zero: the published images are undistorted),
  ``R`` = camera-to-world rotation (3 lines), the centre ``C`` (1 line), ``width height``.
  COLMAP pose: ``R_cw = R^T``, ``t = -R^T C``.
* Middlebury multi-view (``*_par.txt``): a count line, then ``name k11..k33 r11..r33 t1 t2 t3``
  with ``P = K [R | t]`` already world-to-camera. Only the listed images present in the par file's
  folder are kept (a partial download lists more views than it has); their sizes come from the
  image files.
* instant-ngp / NeRF / nerfstudio ``transforms.json``: ``transform_matrix`` is camera-to-world in
  OpenGL axes (x right, y up, z backward). COLMAP pose: flip the y and z columns, then invert.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np
import pycolmap
from PIL import Image as PILImage

COLMAP_MODEL_FILES = (("cameras.txt", "images.txt"), ("cameras.bin", "images.bin"))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


@dataclass(frozen=True)
class GroundTruthImage:
    """One image's ground truth: COLMAP ``cam_from_world`` pose and its camera.

    rotation: (3, 3) float64, ``R`` of ``x_cam = R x_world + t``.
    translation: (3,) float64, ``t``.
    camera: intrinsics with model, width and height (COLMAP parameter order).
    """

    name: str
    rotation: np.ndarray
    translation: np.ndarray
    camera: pycolmap.Camera

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates, ``-R^T t``."""
        return -self.rotation.T @ self.translation

    @property
    def K(self) -> np.ndarray:
        """(3, 3) calibration matrix of the camera (distortion, if any, not included)."""
        return np.asarray(self.camera.calibration_matrix(), dtype=np.float64)


class GroundTruth:
    """Ground truth of a scene: :class:`GroundTruthImage` per image name.

    Iteration and the array accessors use the sorted image names, so results do not depend on
    the order of the source file.
    """

    def __init__(self, images: dict[str, GroundTruthImage] | list[GroundTruthImage], source: str = ""):
        items = images.values() if isinstance(images, dict) else images
        self.images: dict[str, GroundTruthImage] = {im.name: im for im in sorted(items, key=lambda im: im.name)}
        self.source = source

    @property
    def names(self) -> list[str]:
        return list(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __contains__(self, name: object) -> bool:
        return name in self.images

    def __getitem__(self, name: str) -> GroundTruthImage:
        return self.images[name]

    def __iter__(self) -> Iterator[GroundTruthImage]:
        return iter(self.images.values())

    def __repr__(self) -> str:
        return f"GroundTruth({len(self)} images, source={self.source!r})"

    def subset(self, names: Iterable[str]) -> "GroundTruth":
        """The ground truth of ``names`` only (a run on part of a scene is scored on that part)."""
        wanted = set(names)
        missing = sorted(wanted - set(self.images))
        if missing:
            raise ValueError(f"{len(missing)} image(s) have no ground truth, e.g. {missing[:3]}")
        return GroundTruth([im for name, im in self.images.items() if name in wanted], self.source)

    def rotations(self) -> np.ndarray:
        """(N, 3, 3) cam_from_world rotations in :attr:`names` order."""
        return np.stack([im.rotation for im in self]).reshape(-1, 3, 3)

    def translations(self) -> np.ndarray:
        """(N, 3) cam_from_world translations in :attr:`names` order."""
        return np.stack([im.translation for im in self]).reshape(-1, 3)

    def centers(self) -> np.ndarray:
        """(N, 3) camera centres in world coordinates in :attr:`names` order."""
        return np.stack([im.center for im in self]).reshape(-1, 3)

    @classmethod
    def from_reconstruction(cls, rec: pycolmap.Reconstruction, source: str = "") -> "GroundTruth":
        """The registered images of a COLMAP model (unregistered ones have no pose)."""
        images = []
        for image in rec.images.values():
            if not image.has_pose:
                continue
            pose = image.cam_from_world()
            images.append(GroundTruthImage(
                name=image.name,
                rotation=np.asarray(pose.rotation.matrix(), dtype=np.float64),
                translation=np.asarray(pose.translation, dtype=np.float64),
                camera=copy.copy(rec.cameras[image.camera_id]),  # own it beyond rec's life
            ))
        return cls(images, source)

    def to_reconstruction(self) -> pycolmap.Reconstruction:
        """The ground truth as a COLMAP model without points (e.g. to write it as COLMAP text).

        Cameras with identical model, size and parameters are shared; image ids are 1..N in name
        order.
        """
        rec = pycolmap.Reconstruction()
        camera_ids: dict[tuple, int] = {}
        for image_id, im in enumerate(self, start=1):
            key = _camera_key(im.camera)
            if key not in camera_ids:
                camera_ids[key] = len(camera_ids) + 1
                camera = copy.copy(im.camera)
                camera.camera_id = camera_ids[key]
                rec.add_camera_with_trivial_rig(camera)
            pose = pycolmap.Rigid3d(pycolmap.Rotation3d(im.rotation), im.translation)
            rec.add_image_with_trivial_frame(
                pycolmap.Image(name=im.name, camera_id=camera_ids[key], image_id=image_id), pose)
        return rec


def load_ground_truth(path: str | Path, image_root: str | Path | None = None) -> GroundTruth:
    """Load ground truth, detecting the layout from ``path``.

    Checked in this order: a COLMAP model folder; a folder of Strecha ``*.camera`` files; a
    ``*_par.txt`` file (or a folder holding exactly one); a ``*.json`` transforms file (or a folder
    holding ``transforms.json``). ``image_root`` only affects transforms files (see
    :func:`load_transforms_json`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ground truth not found: {path}")
    if path.is_dir():
        if _is_colmap_model(path):
            return load_colmap(path)
        if any(path.glob("*.camera")):
            return load_strecha(path)
        pars = sorted(path.glob("*_par.txt"))
        if len(pars) == 1:
            return load_middlebury(pars[0])
        if (path / "transforms.json").is_file():
            return load_transforms_json(path / "transforms.json", image_root)
        raise ValueError(
            f"{path}: no ground truth layout recognised (expected a COLMAP model with cameras/images "
            f".txt or .bin, Strecha *.camera files, one Middlebury *_par.txt, or transforms.json)")
    if path.name.endswith("_par.txt"):
        return load_middlebury(path)
    if path.suffix == ".json":
        return load_transforms_json(path, image_root)
    raise ValueError(f"{path}: unknown ground truth file (expected *_par.txt or a transforms *.json)")


def load_colmap(path: str | Path) -> GroundTruth:
    """Registered images of a COLMAP text or binary model folder."""
    return GroundTruth.from_reconstruction(pycolmap.Reconstruction(str(path)), source=f"colmap:{path}")


def load_strecha(folder: str | Path) -> GroundTruth:
    """A folder of Strecha ``<image name>.camera`` files (image name = file name minus ``.camera``)."""
    folder = Path(folder)
    cameras = _CameraPool()
    images = []
    for file in sorted(folder.glob("*.camera")):
        values = np.array(_read_numbers(file), dtype=np.float64)
        if values.size != 26:
            raise ValueError(f"{file}: a Strecha .camera file has 26 numbers (K 9, distortion 3, R 9, "
                             f"C 3, width height), found {values.size}")
        K = values[0:9].reshape(3, 3)
        if np.any(values[9:12] != 0):
            raise ValueError(f"{file}: non-zero radial distortion {values[9:12].tolist()} is not "
                             "supported (the published Strecha images are undistorted)")
        rotation = _nearest_rotation(values[12:21].reshape(3, 3).T, file)
        center = values[21:24]
        camera = cameras.pinhole(K, int(values[24]), int(values[25]), file)
        images.append(GroundTruthImage(file.name[: -len(".camera")], rotation, -rotation @ center, camera))
    return GroundTruth(images, source=f"strecha:{folder}")


def load_middlebury(par_file: str | Path) -> GroundTruth:
    """A Middlebury ``*_par.txt``; keeps the listed images that exist next to it.

    The image size is read from each image file (the par file does not have it).
    """
    par_file = Path(par_file)
    lines = [line.split() for line in par_file.read_text().splitlines() if line.strip()]
    if not lines or not lines[0][0].isdigit():
        raise ValueError(f"{par_file}: expected the number of cameras on the first line")
    count = int(lines[0][0])
    rows = lines[1:]
    if len(rows) != count or any(len(row) != 22 for row in rows):
        raise ValueError(f"{par_file}: expected {count} lines of 'name k11..k33 r11..r33 t1 t2 t3' "
                         f"(22 fields), found {len(rows)} lines")
    cameras = _CameraPool()
    images = []
    for row in rows:
        image_file = par_file.parent / row[0]
        if not image_file.is_file():
            continue
        values = np.array(row[1:], dtype=np.float64)
        with PILImage.open(image_file) as pil:
            width, height = pil.size
        camera = cameras.pinhole(values[0:9].reshape(3, 3), width, height, par_file)
        rotation = _nearest_rotation(values[9:18].reshape(3, 3), par_file)
        images.append(GroundTruthImage(row[0], rotation, values[18:21], camera))
    if not images:
        raise ValueError(f"{par_file}: none of its {count} images is in {par_file.parent}; the "
                         "loader keeps the views whose images are present and reads their size")
    return GroundTruth(images, source=f"middlebury:{par_file}")


def load_transforms_json(json_file: str | Path, image_root: str | Path | None = None) -> GroundTruth:
    """An instant-ngp / NeRF / nerfstudio ``transforms.json``.

    Intrinsics: ``fl_x, fl_y, cx, cy, w, h`` (top level, or per frame overriding it); without
    ``fl_x`` the focal comes from ``camera_angle_x`` (``w / (2 tan(angle / 2))``), without ``cx, cy``
    the image centre, without ``w, h`` the image file. Distortion ``k1 k2 p1 p2`` -> OPENCV, plus
    ``k3`` -> FULL_OPENCV; ``camera_model: OPENCV_FISHEYE`` or ``is_fisheye`` -> OPENCV_FISHEYE
    (``k1..k4``); none -> PINHOLE.

    Image names: each ``file_path`` is resolved against the json's folder (a path without suffix,
    as in the NeRF synthetic scenes, gets the suffix of the image file that exists) and made
    relative to ``image_root``; by default the deepest folder common to all frames, e.g.
    ``images/0001.jpg`` -> ``0001.jpg``.
    """
    json_file = Path(json_file)
    data = json.loads(json_file.read_text())
    frames = data.get("frames")
    if not frames:
        raise ValueError(f"{json_file}: no 'frames' list")
    for index, frame in enumerate(frames):
        missing = {"file_path", "transform_matrix"} - set(frame)
        if missing:
            raise ValueError(f"{json_file}: frame {index} has no {', '.join(sorted(missing))}")
    files = [_frame_file(json_file.parent, frame["file_path"]) for frame in frames]
    root = Path(os.path.abspath(image_root)) if image_root is not None else Path(
        os.path.commonpath([f.parent for f in files]))
    outside = [str(f) for f in files if not f.is_relative_to(root)]
    if outside:
        raise ValueError(f"{json_file}: frame images {outside[:3]} are not inside the image root {root}")
    cameras = _CameraPool()
    images = []
    for frame, file in zip(frames, files):
        intrinsics = {**data, **frame}
        camera = cameras.add(_transforms_camera(intrinsics, file, json_file))
        cam_to_world_gl = np.asarray(frame["transform_matrix"], dtype=np.float64)[:3, :4]
        cam_to_world = cam_to_world_gl * np.array([1.0, -1.0, -1.0, 1.0])  # OpenGL -> OpenCV axes
        rotation = _nearest_rotation(cam_to_world[:, :3].T, json_file)
        name = PurePosixPath(*file.relative_to(root).parts).as_posix()
        images.append(GroundTruthImage(name, rotation, -rotation @ cam_to_world[:, 3], camera))
    if len({im.name for im in images}) != len(images):
        raise ValueError(f"{json_file}: several frames have the same image name")
    return GroundTruth(images, source=f"transforms:{json_file}")


def _frame_file(folder: Path, file_path: str) -> Path:
    """Absolute, normalised path of a frame's image (``./images/x.jpg`` or ``train/r_0``)."""
    path = Path(os.path.abspath(folder / file_path))  # abspath also normalises ./ and ../
    if path.suffix:
        return path
    for suffix in IMAGE_SUFFIXES:
        if path.with_name(path.name + suffix).is_file():
            return path.with_name(path.name + suffix)
    raise ValueError(f"{path}: frame file_path has no suffix and no image with a known suffix exists")


def _transforms_camera(values: dict, image_file: Path, json_file: Path) -> pycolmap.Camera:
    """COLMAP camera from the intrinsics keys of a transforms file (frame keys override)."""
    if "w" in values and "h" in values:
        width, height = int(values["w"]), int(values["h"])
    else:
        if not image_file.is_file():
            raise ValueError(f"{json_file}: no 'w'/'h' and no image {image_file} to read the size from")
        with PILImage.open(image_file) as pil:
            width, height = pil.size
    if "fl_x" in values:
        fx = float(values["fl_x"])
    elif "camera_angle_x" in values:
        fx = width / (2.0 * math.tan(float(values["camera_angle_x"]) / 2.0))
    else:
        raise ValueError(f"{json_file}: no focal length (fl_x or camera_angle_x)")
    if "fl_y" in values:
        fy = float(values["fl_y"])
    elif "camera_angle_y" in values and "fl_x" not in values:
        fy = height / (2.0 * math.tan(float(values["camera_angle_y"]) / 2.0))
    else:
        fy = fx
    cx = float(values.get("cx", width / 2.0))
    cy = float(values.get("cy", height / 2.0))
    k1, k2, k3, k4, p1, p2 = (float(values.get(key, 0.0)) for key in ("k1", "k2", "k3", "k4", "p1", "p2"))
    if values.get("camera_model") == "OPENCV_FISHEYE" or values.get("is_fisheye", False):
        model, params = "OPENCV_FISHEYE", [fx, fy, cx, cy, k1, k2, k3, k4]
    elif k4 != 0.0:
        raise ValueError(f"{json_file}: a perspective camera with k4 != 0 has no COLMAP model")
    elif k3 != 0.0:
        model, params = "FULL_OPENCV", [fx, fy, cx, cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0]
    elif any(v != 0.0 for v in (k1, k2, p1, p2)):
        model, params = "OPENCV", [fx, fy, cx, cy, k1, k2, p1, p2]
    else:
        model, params = "PINHOLE", [fx, fy, cx, cy]
    return pycolmap.Camera(model=model, width=width, height=height, params=params)


class _CameraPool:
    """Hands out one shared ``pycolmap.Camera`` per distinct (model, size, params)."""

    def __init__(self) -> None:
        self._cameras: dict[tuple, pycolmap.Camera] = {}

    def add(self, camera: pycolmap.Camera) -> pycolmap.Camera:
        key = _camera_key(camera)
        if key not in self._cameras:
            camera.camera_id = len(self._cameras) + 1
            self._cameras[key] = camera
        return self._cameras[key]

    def pinhole(self, K: np.ndarray, width: int, height: int, source: Path) -> pycolmap.Camera:
        """PINHOLE camera from a (3, 3) K without skew."""
        if abs(K[0, 1]) > 1e-9 * abs(K[0, 0]) or np.any(K[2] != (0.0, 0.0, 1.0)) or K[1, 0] != 0.0:
            raise ValueError(f"{source}: K {K.tolist()} is not a pinhole matrix without skew")
        params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
        return self.add(pycolmap.Camera(model="PINHOLE", width=width, height=height, params=params))


def _nearest_rotation(M: np.ndarray, source: Path, tolerance: float = 1e-3) -> np.ndarray:
    """The rotation closest to (3, 3) ``M`` (Frobenius), for matrices printed with few digits.

    Text formats store rotations with 6 to 17 significant digits, so they are orthonormal only to
    that precision; the evaluation's angle formulas assume exact rotations.
    """
    U, _, Vt = np.linalg.svd(M)
    R = U @ Vt
    if np.linalg.det(R) < 0 or np.abs(R - M).max() > tolerance:
        raise ValueError(f"{source}: {M.tolist()} is not a rotation matrix")
    return R


def _camera_key(camera: pycolmap.Camera) -> tuple:
    return (camera.model.name, camera.width, camera.height, tuple(np.asarray(camera.params).tolist()))


def _is_colmap_model(folder: Path) -> bool:
    return any(all((folder / f).is_file() for f in files) for files in COLMAP_MODEL_FILES)


def _read_numbers(file: Path) -> list[float]:
    return [float(v) for v in file.read_text().split()]
