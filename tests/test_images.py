"""Image discovery and decoding: names as hloc's, EXIF orientation and focal, odd pixel formats."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from recon.io.images import (DEFAULT_FOCAL_FACTOR, ImageError, list_image_files, read_image, read_image_info,
                             resize_max, usable_images)
from recon.priors.focal import focal_prior


def save(path, array, mode=None, exif=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path, exif=exif) if exif is not None else image.save(path)
    return path


def test_discovery_is_recursive_sorted_and_relative(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    for name in ("b.JPG", "a.png", "sub/c.webp", "sub/deeper/d.tiff", "e.bmp"):
        save(tmp_path / name, rgb)
    (tmp_path / "notes.txt").write_text("not an image")
    assert list_image_files(tmp_path) == ["a.png", "b.JPG", "e.bmp", "sub/c.webp", "sub/deeper/d.tiff"]


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((10, 20, 3), np.uint8)
    array[0, 0] = 255  # a marker in the top-left corner of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(tmp_path / "rot.jpg", array, exif=exif)
    image = read_image(path)
    assert image.shape == (20, 10, 3)
    info = read_image_info(path, "rot.jpg")
    assert (info.width, info.height) == (10, 20)
    assert image[0, -1].mean() > 100  # the marker moved to the top-right corner


def test_pixel_formats_become_8bit_rgb(tmp_path):
    gray16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    path16 = tmp_path / "g16.png"
    Image.fromarray(gray16).save(path16)
    image = read_image(path16)
    assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
    assert image[-1, -1, 0] == round(63000 / 65535 * 255)  # scaled, not clipped at 255

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128  # half transparent red over black
    image = read_image(save(tmp_path / "a.png", rgba))
    assert image.shape == (4, 4, 3) and abs(int(image[0, 0, 0]) - 100) <= 1

    cmyk = Image.new("CMYK", (5, 3), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "c.jpg")
    image = read_image(tmp_path / "c.jpg")
    assert image.shape == (3, 5, 3) and image[1, 2, 0] > 200 and image[1, 2, 1] < 60

    gray = read_image(save(tmp_path / "g.png", np.full((3, 3), 7, np.uint8)), grayscale=True)
    assert gray.shape == (3, 3) and gray[0, 0] == 7


def test_focal_prior_from_exif(tmp_path):
    array = np.zeros((30, 40, 3), np.uint8)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 35  # FocalLengthIn35mmFilm
    info = read_image_info(save(tmp_path / "f35.jpg", array, exif=exif), "f35.jpg")
    assert info.exif_focal == pytest.approx(35 / 36 * 40)

    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x920A] = 5.0       # FocalLength, mm
    ifd[0xA20E] = 200.0     # FocalPlaneXResolution, pixels per unit
    ifd[0xA210] = 3         # unit: cm
    info = read_image_info(save(tmp_path / "fplane.jpg", array, exif=exif), "fplane.jpg")
    assert info.exif_focal == pytest.approx(5.0 * 200.0 / 10.0)

    info = read_image_info(save(tmp_path / "none.jpg", array), "none.jpg")
    assert info.exif_focal is None
    assert focal_prior(info.name, info.exif_focal, None, info.width, info.height) == (
        pytest.approx(DEFAULT_FOCAL_FACTOR * 40), "default")


def test_unreadable_files_are_skipped_with_a_warning(tmp_path, caplog):
    good = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    save(tmp_path / "a.png", good)
    save(tmp_path / "b.png", good)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not a PNG")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    infos = usable_images(tmp_path)
    assert [info.name for info in infos] == ["a.png", "b.png"]
    warning = " ".join(r.getMessage() for r in caplog.records)
    for name in ("empty.jpg", "text.png", "truncated.png"):
        assert name in warning


def test_too_few_or_no_images_is_an_error(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        usable_images(tmp_path / "missing")
    with pytest.raises(ImageError, match="no images"):
        usable_images(tmp_path)
    save(tmp_path / "one.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"\x00")
    with pytest.raises(ImageError, match="only 1 readable"):
        usable_images(tmp_path)


def test_resize_reports_per_axis_scale():
    image = np.zeros((300, 400, 3), np.uint8)
    resized, scale = resize_max(image, 100)
    assert resized.shape == (75, 100, 3)
    np.testing.assert_allclose(scale, [4.0, 4.0])
    same, scale = resize_max(image, 0)
    assert same is image and np.all(scale == 1)
