"""Where metric depth and focal priors come from: one small interface, several sources.

A :class:`DepthSource` answers, for an image name, a metric depth map in that image's pixels and
(optionally) its focal length in pixels. Depth Pro, ground-truth depth of synthetic scenes and
MASt3R pointmaps all fit it, so the priors stage and the metric-scale estimator can be tested
exactly with known depth and run unchanged on a network's predictions.

Depth maps are (H, W) float32 with ``depth[row, col]`` the depth (distance along the optical
axis, metres) at the centre of pixel (col, row), i.e. COLMAP image coordinates
(col + 0.5, row + 0.5). Values that are 0, negative or non-finite mean "unknown".
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..io.h5 import H5Writer, list_names
from ..match import open_resumable

DEPTH_FILE = "priors-depth.h5"  # the priors stage's depth maps, in the output folder


@runtime_checkable
class DepthSource(Protocol):
    """Metric depth and focal length per image. ``name`` labels the source in report.json."""

    name: str

    def depth(self, image_name: str) -> np.ndarray:
        """(H, W) float32 metric depth of the image, in its own pixels."""
        ...

    def focal_px(self, image_name: str) -> float | None:
        """Focal length in pixels of the image, or None when the source has no estimate."""
        ...


class ArrayDepthSource:
    """Depth maps (and focal lengths) held in memory: ground truth of synthetic scenes, or
    pointmap depths already computed (e.g. MASt3R's z channel)."""

    def __init__(self, depths: Mapping[str, np.ndarray], focals: Mapping[str, float] | None = None,
                 name: str = "ground_truth") -> None:
        self.depths = depths
        self.focals = dict(focals or {})
        self.name = name

    def depth(self, image_name: str) -> np.ndarray:
        try:
            return np.asarray(self.depths[image_name], dtype=np.float32)
        except KeyError:
            raise KeyError(f"{self.name}: no depth map for image '{image_name}'") from None

    def focal_px(self, image_name: str) -> float | None:
        return self.focals.get(image_name)


class DepthProSource:
    """Depth Pro predictions for images read by ``load_image(name) -> (H, W, 3) uint8 RGB``.

    ``focal_hint(name)`` (e.g. the EXIF focal in pixels) is given to the network when known, so
    the metric depth uses it instead of the predicted field of view, as the official CLI does.
    Focal lengths are kept for every image; only the most recent depth map is kept, since
    full-resolution maps of a whole collection do not fit in memory (the priors stage keeps them
    on disk with :func:`cache_depths`).
    """

    name = "depth_pro"

    def __init__(self, model: torch.nn.Module, load_image: Callable[[str], np.ndarray],
                 focal_hint: Callable[[str], float | None] | None = None) -> None:
        self.model = model
        self.load_image = load_image
        self.focal_hint = focal_hint
        self._focals: dict[str, float] = {}
        self._last: tuple[str, np.ndarray] | None = None

    def _predict(self, image_name: str) -> np.ndarray:
        if self._last is not None and self._last[0] == image_name:
            return self._last[1]
        rgb = np.asarray(self.load_image(image_name))
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"depth_pro: image '{image_name}' must be (H, W, 3) RGB, got shape {rgb.shape}")
        device = next(self.model.parameters()).device
        image = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float() / 255
        data = {"image": image}
        hint = self.focal_hint(image_name) if self.focal_hint is not None else None
        if hint is not None:
            data["focal_px"] = torch.tensor([float(hint)], device=device)
        out = self.model(data)
        depth = out["depth"][0].float().cpu().numpy()
        self._focals[image_name] = float(out["focal_px"][0])
        self._last = (image_name, depth)
        return depth

    def depth(self, image_name: str) -> np.ndarray:
        return self._predict(image_name)

    def focal_px(self, image_name: str) -> float | None:
        if image_name not in self._focals:
            self._predict(image_name)
        return self._focals[image_name]


def sample_depth(depth: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Depth at image points ``xy`` (N, 2) in COLMAP pixel coordinates -> (N,) float64.

    Nearest pixel (the pixel containing the point: ``floor(x), floor(y)``), not bilinear: at
    depth edges and next to outlier pixels, interpolation would invent depths that belong to no
    surface. Points outside the image or on unknown depth give NaN.
    """
    height, width = depth.shape
    cols = np.floor(xy[:, 0]).astype(np.int64)
    rows = np.floor(xy[:, 1]).astype(np.int64)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    values = np.full(len(xy), np.nan)
    values[inside] = depth[rows[inside], cols[inside]]
    values[~(np.isfinite(values) & (values > 0))] = np.nan
    return values


class H5DepthSource:
    """Depth maps and focal lengths cached by :func:`cache_depths` in ``priors-depth.h5``.

    Layout: one group per image name (relative path; ``a/b.jpg`` is a nested group, as in
    features.h5) holding ``depth`` (H, W) float16 metres in the image's own pixels (float16's
    0.05 % resolution is far below any depth prior's error and halves the file; depths beyond
    its 65,504 m become inf, i.e. unknown, like sky) and the
    attribute ``focal_px`` (NaN when the source had no estimate). Root attributes:
    ``recon_fingerprint`` (the configuration that made it) and ``source`` (the source's name).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with h5py.File(self.path, "r", libver="latest") as f:
            self.name = str(f.attrs.get("source", "depth"))

    def names(self) -> list[str]:
        """Every image with a cached depth map."""
        return list_names(self.path)

    def depth(self, image_name: str) -> np.ndarray:
        with h5py.File(self.path, "r", libver="latest") as f:
            if image_name not in f:
                raise KeyError(f"{self.name}: no depth map for image '{image_name}' in {self.path}")
            return f[image_name]["depth"][()].astype(np.float32)

    def focal_px(self, image_name: str) -> float | None:
        with h5py.File(self.path, "r", libver="latest") as f:
            focal = float(f[image_name]["depth"].attrs["focal_px"]) if image_name in f else float("nan")
        return focal if np.isfinite(focal) else None


def cache_depths(open_source: Callable[[], DepthSource], names: Sequence[str], path: str | Path,
                 stamp: str) -> H5DepthSource:
    """Ask a depth source once per image for its depth and focal and keep both in ``path``.

    ``open_source()`` makes the source, and is called only when some image is missing (a
    resumed run loads no network).

    Why: a network source (Depth Pro) is expensive and its full-resolution maps of a whole
    collection do not fit in memory, yet the metric scale and the alignment's depth term read
    them after mapping. Images already in a file made with the same ``stamp`` are skipped (a
    killed run resumes per image); progress is published atomically every few seconds.
    """
    with open_resumable(Path(path), stamp) as writer:
        todo = [name for name in names if name not in writer]
        if todo:
            _write_depths(writer, open_source(), todo)
    return H5DepthSource(path)


def _write_depths(writer: H5Writer, source: DepthSource, names: Sequence[str]) -> None:
    """One group per image (see :class:`H5DepthSource`), published at checkpoints."""
    writer.file.attrs["source"] = source.name
    for name in tqdm(names, desc=f"{source.name} depth", unit="img"):
        depth = np.asarray(source.depth(name), dtype=np.float32)
        if depth.ndim != 2:
            raise ValueError(f"{source.name}: depth of '{name}' must be (H, W), got shape {depth.shape}")
        focal = source.focal_px(name)
        writer.delete(name)
        dataset = writer.file.create_group(name).create_dataset("depth", data=depth.astype(np.float16))
        dataset.attrs["focal_px"] = float("nan") if focal is None else float(focal)
        writer.checkpoint()
        