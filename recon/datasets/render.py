"""An exact synthetic scene: analytic geometry, procedural textures, known cameras.

Why: the pipeline needs a scene whose answer is known exactly - intrinsics, poses and depth - to
test and demo reconstruction without downloading anything. This module ray-casts a small room
(floor, walls, ceiling) holding a few boxes and a sphere. Every surface carries a seeded solid
texture (multi-octave value noise plus blobs, in colour) so SIFT finds many repeatable features,
and each pixel averages ``supersample x supersample`` rays so those features are stable.

Conventions (COLMAP's, see DESIGN.md): poses are ``cam_from_world`` (x_cam = R x_world + t);
image coordinates put (0.5, 0.5) at the centre of the top-left pixel, so integer pixel (u, v)
(column u, row v) has its centre at (u + 0.5, v + 0.5). Rays are unprojected with the
``pycolmap.Camera`` itself, so the renderer and COLMAP agree on the camera model by construction.
Depth is the camera-frame z of the surface hit by the ray through the pixel centre.

World frame: z is up, the floor is z = 0, and the scene centre is near the origin.

Reproduce the bundled sample: ``python -m recon.datasets.render datasets/sample`` (see
``datasets/sample/SOURCE.md``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pycolmap
from PIL import Image
from tqdm import tqdm

NOISE_PERIOD = 64  # lattice cells per axis of each noise table (the texture repeats after this)
RAY_CHUNK = 1 << 16  # rays shaded per batch: bounds memory at a few tens of MB
EPS = 1e-9


@dataclass(frozen=True)
class Material:
    """Colours of one procedural texture; ``offset`` shifts it in noise space so that
    surfaces sharing the noise tables still look different."""

    color_a: np.ndarray  # (3,) RGB in [0, 1], mixed with color_b by low-frequency noise
    color_b: np.ndarray  # (3,)
    spot_color: np.ndarray  # (3,) colour of the blobs
    offset: np.ndarray  # (3,) shift in metres applied before noise lookup


@dataclass(frozen=True)
class Box:
    """A box standing upright: axis-aligned in its own frame, rotated by ``yaw`` about world z."""

    center: np.ndarray  # (3,)
    half_size: np.ndarray  # (3,) half extents along the box's own x, y, z
    yaw: float  # radians
    material: int


@dataclass(frozen=True)
class Sphere:
    center: np.ndarray  # (3,)
    radius: float
    material: int


@dataclass(frozen=True)
class Scene:
    """A closed room (the viewer is inside it, so every ray hits something) with objects.

    ``room_materials`` index ``materials`` for the faces -x, +x, -y, +y, floor, ceiling.
    ``noise`` holds one random lattice per octave, shape (num_octaves, P, P, P), float32.
    """

    room_min: np.ndarray  # (3,)
    room_max: np.ndarray  # (3,)
    room_materials: tuple[int, ...]
    boxes: tuple[Box, ...]
    spheres: tuple[Sphere, ...]
    materials: tuple[Material, ...]
    noise: np.ndarray
    light: np.ndarray  # (3,) unit vector towards the light
    target: np.ndarray  # (3,) the point the default views look at


# Texture scales in metres: the cell size of each value-noise octave.
HUE_CELL = 1.2
DETAIL_CELLS = (0.4, 0.2, 0.1, 0.05, 0.025)
SPOT_CELL = 0.12


def make_scene(seed: int = 0) -> Scene:
    """The bundled scene: fixed layout, seeded colours and textures.

    The layout is fixed (boxes, one stacked, and a sphere near the centre, so an orbit of views
    sees non-planar structure; see benchmarks/sample_pycolmap.py for how it reconstructs); the
    seed draws the materials and the noise lattices.
    """
    rng = np.random.default_rng(seed)
    num_octaves = 1 + len(DETAIL_CELLS) + 1  # hue, detail octaves, spots
    noise = rng.random((num_octaves, NOISE_PERIOD, NOISE_PERIOD, NOISE_PERIOD), dtype=np.float32)
    boxes = (
        Box(np.array([0.65, 0.45, 0.35]), np.array([0.45, 0.30, 0.35]), np.deg2rad(20.0), 6),
        Box(np.array([0.65, 0.45, 0.85]), np.array([0.18, 0.22, 0.15]), np.deg2rad(65.0), 7),
        Box(np.array([-0.75, 0.55, 0.50]), np.array([0.28, 0.28, 0.50]), np.deg2rad(-15.0), 8),
        Box(np.array([0.05, -0.85, 0.20]), np.array([0.60, 0.25, 0.20]), np.deg2rad(40.0), 9),
    )
    spheres = (Sphere(np.array([-0.45, -0.25, 0.40]), 0.40, 10),)
    num_materials = 11
    materials = tuple(
        Material(
            color_a=rng.uniform(0.25, 1.0, 3),
            color_b=rng.uniform(0.25, 1.0, 3),
            spot_color=rng.uniform(0.0, 0.6, 3),
            offset=rng.uniform(0.0, 1000.0, 3),
        )
        for _ in range(num_materials)
    )
    light = np.array([0.35, 0.55, 1.0])
    return Scene(
        room_min=np.array([-5.0, -5.0, 0.0]),
        room_max=np.array([5.0, 5.0, 3.5]),
        room_materials=(0, 1, 2, 3, 4, 5),
        boxes=boxes,
        spheres=spheres,
        materials=materials,
        noise=noise,
        light=light / np.linalg.norm(light),
        target=np.array([0.0, 0.0, 0.35]),
    )


# ----------------------------------------------------------------------------- cameras


def default_camera(width: int = 512, height: int = 384, camera_id: int = 1) -> pycolmap.Camera:
    """A PINHOLE camera with focal 0.85 * width (about 61 degrees horizontal field of view) and
    the principal point at the image centre (COLMAP convention: (w/2, h/2))."""
    f = 0.85 * width
    return pycolmap.Camera(
        camera_id=camera_id, model="PINHOLE", width=width, height=height,
        params=[f, f, width / 2.0, height / 2.0],
    )


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> pycolmap.Rigid3d:
    """cam_from_world of a camera at ``center`` looking at ``target`` with no roll.

    Camera axes (COLMAP): x right, y down, z forward. Rows of R are those axes in world.
    """
    forward = target - center
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return pycolmap.Rigid3d(pycolmap.Rotation3d(R), -R @ center)


def orbit_poses(scene: Scene, num_views: int, seed: int = 0) -> list[pycolmap.Rigid3d]:
    """Views on a full orbit around ``scene.target`` with seeded jitter.

    Azimuths are evenly spaced (plus up to a quarter step of jitter); radius and height vary
    smoothly (two and three cycles per orbit) so the views are not coplanar.
    """
    if num_views < 2:
        raise ValueError(f"num_views must be at least 2, got {num_views}")
    rng = np.random.default_rng([seed, 1])
    step = 2.0 * np.pi / num_views
    k = np.arange(num_views)
    azimuth = k * step + rng.uniform(-0.25, 0.25, num_views) * step
    phase = 2.0 * np.pi * k / num_views
    radius = 3.3 + 0.3 * np.sin(2.0 * phase)
    height = 1.7 + 0.45 * np.sin(3.0 * phase + 0.5)
    poses = []
    for a, r, h in zip(azimuth, radius, height):
        center = np.array([r * np.cos(a), r * np.sin(a), h])
        target = scene.target + rng.uniform(-0.15, 0.15, 3)
        poses.append(look_at(center, target))
    return poses


# ----------------------------------------------------------------------------- ray casting


def _intersect_room(scene: Scene, origins: np.ndarray, dirs: np.ndarray):
    """Exit point of rays starting inside the room box. Returns (t, normal, material), where the
    normal points into the room."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_lo = (scene.room_min - origins) / dirs
        t_hi = (scene.room_max - origins) / dirs
    t_far = np.where(dirs > 0, t_hi, t_lo)  # (N, 3) exit distance per axis slab
    t_far = np.where(dirs == 0, np.inf, t_far)
    axis = np.argmin(t_far, axis=1)
    t = np.take_along_axis(t_far, axis[:, None], axis=1)[:, 0]
    positive = np.take_along_axis(dirs, axis[:, None], axis=1)[:, 0] > 0
    normal = np.zeros_like(dirs)
    normal[np.arange(len(dirs)), axis] = np.where(positive, -1.0, 1.0)
    face = 2 * axis + positive  # faces ordered -x, +x, -y, +y, -z, +z
    material = np.asarray(scene.room_materials)[face]
    return t, normal, material


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _intersect_box(box: Box, origins: np.ndarray, dirs: np.ndarray):
    """Entry point of rays into a box (slab method in the box frame); t = inf on a miss."""
    R = _yaw_matrix(box.yaw)  # world_from_box
    o = (origins - box.center) @ R  # rows: R^T (x - c)
    d = dirs @ R
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-box.half_size - o) / d
        t2 = (box.half_size - o) / d
    t_near = np.minimum(t1, t2)
    t_far = np.maximum(t1, t2)
    # A ray parallel to a slab: inside it -> no constraint, outside -> miss.
    parallel = d == 0
    inside = np.abs(o) <= box.half_size
    t_near = np.where(parallel, np.where(inside, -np.inf, np.inf), t_near)
    t_far = np.where(parallel, np.where(inside, np.inf, -np.inf), t_far)
    axis = np.argmax(t_near, axis=1)
    t_enter = np.take_along_axis(t_near, axis[:, None], axis=1)[:, 0]
    t_exit = t_far.min(axis=1)
    hit = (t_enter <= t_exit) & (t_enter > EPS)
    t = np.where(hit, t_enter, np.inf)
    d_axis = np.take_along_axis(d, axis[:, None], axis=1)[:, 0]
    normal_local = np.zeros_like(d)
    normal_local[np.arange(len(d)), axis] = np.where(d_axis > 0, -1.0, 1.0)
    return t, normal_local @ R.T


def _intersect_sphere(sphere: Sphere, origins: np.ndarray, dirs: np.ndarray):
    """Nearest front intersection with a sphere; t = inf on a miss."""
    oc = origins - sphere.center
    a = np.einsum("ij,ij->i", dirs, dirs)
    b = np.einsum("ij,ij->i", oc, dirs)
    c = np.einsum("ij,ij->i", oc, oc) - sphere.radius**2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = (-b - root) / a
    hit = (disc >= 0) & (t > EPS)
    t = np.where(hit, t, np.inf)
    points = origins + np.where(hit, t, 0.0)[:, None] * dirs
    return t, (points - sphere.center) / sphere.radius


def _may_hit(center: np.ndarray, radius: float, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(N,) bool: rays that pass within ``radius`` of ``center`` ahead of their origin. Used to
    intersect each object only with the rays that can reach it."""
    oc = center - origins
    dd = np.einsum("ij,ij->i", dirs, dirs)
    t_closest = np.einsum("ij,ij->i", oc, dirs) / dd
    miss2 = np.einsum("ij,ij->i", oc, oc) - t_closest**2 * dd  # squared distance at closest approach
    ahead = (t_closest > 0) | (np.einsum("ij,ij->i", oc, oc) <= radius**2)
    return ahead & (miss2 <= radius**2 * (1 + 1e-9))


def cast_rays(scene: Scene, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest surface along each ray.

    Args:
        origins: (N, 3) ray origins in world, inside the room.
        dirs: (N, 3) ray directions (any length; t is in units of ``dirs``).
    Returns:
        t (N,) ray parameter of the hit, normals (N, 3) unit, facing the ray's origin side,
        materials (N,) int index into ``scene.materials``.
    """
    t, normal, material = _intersect_room(scene, origins, dirs)
    objects = [(b, _intersect_box, b.center, float(np.linalg.norm(b.half_size))) for b in scene.boxes]
    objects += [(s, _intersect_sphere, s.center, s.radius) for s in scene.spheres]
    for obj, intersect, center, radius in objects:
        rays = np.flatnonzero(_may_hit(center, radius, origins, dirs))
        t_obj, n_obj = intersect(obj, origins[rays], dirs[rays])
        closer = t_obj < t[rays]
        hit = rays[closer]
        t[hit] = t_obj[closer]
        normal[hit] = n_obj[closer]
        material[hit] = obj.material
    return t, normal, material


# ----------------------------------------------------------------------------- texture


def value_noise(points: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1]: random values on the integer lattice (periodic with the
    table size), blended trilinearly with smoothstep weights.

    Args:
        points: (N, 3) coordinates in lattice cells.
        lattice: (P, P, P) random values.
    Returns: (N,) float32.
    """
    P = lattice.shape[0]
    cell = np.floor(points)
    frac = (points - cell).astype(np.float32)
    w = frac * frac * (3.0 - 2.0 * frac)  # (N, 3)
    i0 = cell.astype(np.int64) % P
    i1 = (i0 + 1) % P
    flat = lattice.reshape(-1)
    out = np.zeros(len(points), dtype=np.float32)
    for corner in range(8):
        bits = [(corner >> axis) & 1 for axis in range(3)]
        idx = [i1[:, a] if bits[a] else i0[:, a] for a in range(3)]
        weight = np.ones(len(points), dtype=np.float32)
        for a in range(3):
            weight = weight * (w[:, a] if bits[a] else 1.0 - w[:, a])
        out += weight * flat[(idx[0] * P + idx[1]) * P + idx[2]]
    return out


def texture(scene: Scene, points: np.ndarray, materials: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) in [0, 1] of surface points: a solid texture evaluated in 3D, so it is
    continuous over edges and needs no surface parametrisation.

    Low-frequency noise mixes two material colours; five octaves of detail noise (0.4 m down
    to 2.5 cm) modulate brightness with high contrast; thresholded noise adds sharp-edged blobs.
    """
    color_a = np.stack([m.color_a for m in scene.materials])[materials]
    color_b = np.stack([m.color_b for m in scene.materials])[materials]
    spot_color = np.stack([m.spot_color for m in scene.materials])[materials]
    p = points + np.stack([m.offset for m in scene.materials])[materials]

    hue = value_noise(p / HUE_CELL, scene.noise[0])
    detail = np.zeros(len(p), dtype=np.float32)
    amplitude, total = 1.0, 0.0
    for octave, cell in enumerate(DETAIL_CELLS, start=1):
        detail += amplitude * value_noise(p / cell, scene.noise[octave])
        total += amplitude
        amplitude *= 0.75
    detail = np.clip(0.5 + 2.2 * (detail / total - 0.5), 0.0, 1.0)
    spot = value_noise(p / SPOT_CELL, scene.noise[-1])
    spot = np.clip((spot - 0.62) / 0.06, 0.0, 1.0)  # blobs with edges about 1 cm wide

    base = color_a + hue[:, None] * (color_b - color_a)
    albedo = base * (0.2 + 0.8 * detail[:, None])
    return albedo + spot[:, None] * (spot_color - albedo)


def shade(scene: Scene, points: np.ndarray, normals: np.ndarray, materials: np.ndarray) -> np.ndarray:
    """Linear RGB (N, 3) of surface points: texture times ambient + Lambertian light (view
    independent, so a point has the same colour in every view)."""
    lambert = np.clip(normals @ scene.light, 0.0, 1.0)
    return texture(scene, points, materials) * (0.55 + 0.45 * lambert)[:, None]


# ----------------------------------------------------------------------------- rendering


def camera_rays(
    camera: pycolmap.Camera, cam_from_world: pycolmap.Rigid3d, pixels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World rays through image points (COLMAP image coordinates).

    Directions are scaled so that their camera-frame z is 1: the ray parameter of a hit is its
    depth. Returns origins (N, 3) and directions (N, 3), float64.
    """
    normalized = camera.cam_from_img(pixels.astype(np.float64))  # (N, 2): x/z, y/z
    dirs_cam = np.concatenate([normalized, np.ones((len(normalized), 1))], axis=1)
    world_from_cam = cam_from_world.inverse()
    R = world_from_cam.rotation.matrix()
    origins = np.broadcast_to(world_from_cam.translation, dirs_cam.shape)
    return np.ascontiguousarray(origins), dirs_cam @ R.T


def _pixel_grid(width: int, height: int, offsets: np.ndarray) -> np.ndarray:
    """COLMAP image coordinates (H*W*S, 2) of integer pixels plus sub-pixel offsets (S, 2),
    ordered row-major by pixel, then by offset. Offset (0.5, 0.5) is the pixel centre."""
    v, u = np.mgrid[0:height, 0:width]
    corners = np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float64)  # (H*W, 2)
    return (corners[:, None, :] + offsets[None, :, :]).reshape(-1, 2)


def _trace(scene: Scene, origins: np.ndarray, dirs: np.ndarray):
    """Colour (N, 3) and depth (N,) of rays, in chunks of RAY_CHUNK."""
    colors = np.empty((len(dirs), 3), dtype=np.float32)
    depth = np.empty(len(dirs), dtype=np.float64)
    for start in range(0, len(dirs), RAY_CHUNK):
        sl = slice(start, start + RAY_CHUNK)
        t, normals, materials = cast_rays(scene, origins[sl], dirs[sl])
        points = origins[sl] + t[:, None] * dirs[sl]
        colors[sl] = shade(scene, points, normals, materials)
        depth[sl] = t
    return colors, depth


def render_view(
    scene: Scene, camera: pycolmap.Camera, cam_from_world: pycolmap.Rigid3d, supersample: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view.

    Each pixel averages ``supersample**2`` rays on a regular sub-pixel grid (a box filter), and
    the result is gamma-encoded (sRGB-like 1/2.2) to uint8.

    Returns:
        rgb: (H, W, 3) uint8.
        depth: (H, W) float32, camera-frame z of the surface seen through each pixel centre.
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    center = cam_from_world.inverse().translation
    if np.any(center <= scene.room_min) or np.any(center >= scene.room_max):
        raise ValueError(f"camera centre {center} is outside the room {scene.room_min}..{scene.room_max}")
    w, h = camera.width, camera.height
    sub = (np.arange(supersample) + 0.5) / supersample
    offsets = np.stack(np.meshgrid(sub, sub, indexing="xy"), axis=-1).reshape(-1, 2)
    origins, dirs = camera_rays(camera, cam_from_world, _pixel_grid(w, h, offsets))
    colors, _ = _trace(scene, origins, dirs)
    linear = colors.reshape(h, w, supersample * supersample, 3).mean(axis=2)
    rgb = np.round(255.0 * np.clip(linear, 0.0, 1.0) ** (1.0 / 2.2)).astype(np.uint8)

    origins, dirs = camera_rays(camera, cam_from_world, _pixel_grid(w, h, np.array([[0.5, 0.5]])))
    _, depth = _trace(scene, origins, dirs)
    return rgb, depth.reshape(h, w).astype(np.float32)


def gt_reconstruction(camera: pycolmap.Camera, poses: Sequence[pycolmap.Rigid3d], names: Sequence[str]) -> pycolmap.Reconstruction:
    """A COLMAP model (no 3D points) holding the camera and one image per pose, ids from 1."""
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(camera)
    for image_id, (name, pose) in enumerate(zip(names, poses), start=1):
        image = pycolmap.Image(name=name, camera_id=camera.camera_id, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pose)
    return rec


def render_scene(
    out_dir: str | Path,
    num_views: int = 20,
    width: int = 512,
    height: int = 384,
    seed: int = 0,
    supersample: int = 3,
    write_depth: bool = False,
    overwrite: bool = False,
) -> Path:
    """Render the scene from an orbit of views and write it with its exact ground truth.

    Layout of ``out_dir``: ``images/view_000.png ...``, ``gt/`` (COLMAP text model: cameras,
    images, rigs, frames, empty points3D), ``depth/view_000.npy ...`` (float32 (H, W), if
    ``write_depth``), and ``render.json`` with the arguments. Everything is written to a
    temporary folder first and moved into place at the end, so an interrupted run leaves nothing.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite)")
    scene = make_scene(seed)
    camera = default_camera(width, height)
    poses = orbit_poses(scene, num_views, seed)
    names = [f"view_{i:03d}.png" for i in range(num_views)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        if write_depth:
            (tmp / "depth").mkdir()
        for name, pose in zip(tqdm(names, desc="render", unit="view"), poses):
            rgb, depth = render_view(scene, camera, pose, supersample)
            Image.fromarray(rgb).save(tmp / "images" / name, optimize=True)
            if write_depth:
                np.save(tmp / "depth" / (Path(name).stem + ".npy"), depth)
        (tmp / "gt").mkdir()
        gt_reconstruction(camera, poses, names).write_text(str(tmp / "gt"))
        args = dict(num_views=num_views, width=width, height=height, seed=seed, supersample=supersample)
        (tmp / "render.json").write_text(json.dumps(args, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``recon render OUT [--views N --width W --height H --seed S --supersample K --depth]``."""
    parser = argparse.ArgumentParser(
        prog="recon render",
        description="Render the synthetic scene with exact ground truth (images/, gt/ COLMAP text model).",
    )
    parser.add_argument("out", type=Path, help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--views", type=int, default=20, help="number of views on the orbit")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0, help="seeds textures, colours and pose jitter")
    parser.add_argument("--supersample", type=int, default=3, help="rays per pixel along each axis")
    parser.add_argument("--depth", action="store_true", help="also write depth/*.npy (float32 camera z)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        out = render_scene(
            args.out, num_views=args.views, width=args.width, height=args.height, seed=args.seed,
            supersample=args.supersample, write_depth=args.depth, overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    print(f"wrote {args.views} views to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
