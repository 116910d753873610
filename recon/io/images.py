"""Finding and reading images, as COLMAP and hloc see them.

Names are paths relative to the image root with ``/`` separators, sorted (hloc's
``list_images`` convention), so the same name addresses an image in features.h5, matches.h5, the
COLMAP database and the model. Pixels are returned after the EXIF orientation is applied (what a
viewer shows; COLMAP reads the raw, unrotated pixels, so our keypoints always refer to the
oriented image and we never mix the two). 8/16-bit, gray, palette, RGBA (alpha dropped over black)
and CMYK files are converted to 8-bit RGB.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
# COLMAP's prior when EXIF has no usable focal length: 1.2 x the longer side (see recon.priors.focal).
DEFAULT_FOCAL_FACTOR = 1.2
_FOCAL_PLANE_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # EXIF ResolutionUnit: inch, cm, mm, um


class ImageError(RuntimeError):
    """No usable images: an empty or missing folder, or fewer than two readable images."""


@dataclass(frozen=True)
class ImageInfo:
    """What the pipeline needs to know about one image before reading its pixels."""

    name: str
    width: int
    height: int
    exif_focal: float | None  # pixels, in the oriented image; None when EXIF has none


def list_image_files(root: str | os.PathLike) -> list[str]:
    """All image files under ``root`` (recursive), as sorted ``/``-separated relative names."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"image folder {root} does not exist or is not a folder")
    names = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    ]
    return sorted(names)


def read_image_info(path: str | os.PathLike, name: str) -> ImageInfo:
    """Size after EXIF orientation and the EXIF focal prior, without decoding the pixels."""
    with Image.open(path) as image:
        exif = image.getexif()
        width, height = image.size
        if exif.get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
            width, height = height, width
        return ImageInfo(name, width, height, exif_focal_pixels(exif, width, height))


def exif_focal_pixels(exif: Image.Exif, width: int, height: int) -> float | None:
    """Focal length in pixels from EXIF, or None.

    Preference: FocalLengthIn35mmFilm (f35 / 36 mm x the longer side, as COLMAP does), then
    FocalLength with FocalPlaneXResolution and its unit (f_mm x pixels per mm; the resolution is
    given for the sensor's long side, so it applies to the unrotated image's x axis).
    """
    ifd = exif.get_ifd(ExifTags.IFD.Exif) if exif else {}
    focal_35 = _positive(ifd.get(ExifTags.Base.FocalLengthIn35mmFilm))
    if focal_35:
        return focal_35 / 36.0 * max(width, height)
    focal_mm = _positive(ifd.get(ExifTags.Base.FocalLength))
    resolution = _positive(ifd.get(ExifTags.Base.FocalPlaneXResolution))
    unit = _FOCAL_PLANE_UNIT_MM.get(int(ifd.get(ExifTags.Base.FocalPlaneResolutionUnit, 2) or 2))
    if focal_mm and resolution and unit:
        return focal_mm * resolution / unit
    return None


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def read_image(path: str | os.PathLike, grayscale: bool = False) -> np.ndarray:
    """Decode an image as uint8 (H, W, 3) RGB or (H, W) gray, EXIF orientation applied."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image = _to_8bit(image)
        image = image.convert("L" if grayscale else "RGB")
        return np.array(image)  # a writable copy (torch.from_numpy needs one)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float modes scaled to 8 bits (PIL's convert would clip them); RGBA over black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F":
            top = max(float(array.max()), 1e-12)
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image


def scan_images(root: str | os.PathLike, names: list[str] | None = None) -> tuple[list[ImageInfo], list[tuple[str, str]]]:
    """Read headers of every image; return usable images and (name, reason) for the others.

    A file is unusable when it is empty, not an image, or truncated (decoding is attempted, so a
    file whose header is fine but whose data is cut short is caught here, not mid-pipeline).
    """
    root = Path(root)
    names = list_image_files(root) if names is None else names
    good: list[ImageInfo] = []
    bad: list[tuple[str, str]] = []
    for name in names:
        path = root / name
        try:
            if path.stat().st_size == 0:
                raise ValueError("empty file")
            info = read_image_info(path, name)
            with Image.open(path) as image:
                image.load()  # full decode: catches truncated data
            good.append(info)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            bad.append((name, f"{type(error).__name__}: {error}"))
    return good, bad


def usable_images(root: str | os.PathLike) -> list[ImageInfo]:
    """The readable images under ``root``; unreadable ones are listed in one warning.

    Raises :class:`ImageError` when the folder is missing or empty, or fewer than two images
    remain - a reconstruction needs at least two.
    """
    names = list_image_files(root)
    if not names:
        raise ImageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    good, bad = scan_images(root, names)
    if bad:
        logger.warning("skipping %d unreadable image(s):\n%s", len(bad),
                       "\n".join(f"  {name}: {reason}" for name, reason in bad))
    if len(good) < 2:
        raise ImageError(f"only {len(good)} readable image(s) under {root}; at least 2 are needed")
    return good


def resize_max(image: np.ndarray, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Downscale so the longer side is at most ``max_size`` (0 = keep); return image and scale.

    ``scale`` = (sx, sy), original / resized size per axis, the factors hloc applies to keypoints:
    ``original = (resized + 0.5) * scale - 0.5``. Uses PIL's antialiased area resampling.
    """
    height, width = image.shape[:2]
    if not max_size or max(height, width) <= max_size:
        return image, np.ones(2)
    factor = max_size / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resized = np.array(Image.fromarray(image).resize(size, Image.Resampling.BOX))  # writable, for torch
    return resized, np.array([width / size[0], height / size[1]], dtype=np.float64)
