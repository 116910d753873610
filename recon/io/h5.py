"""hloc's HDF5 files, read and written exactly as hloc 1.5 does.

``features.h5``: one group per image name (relative path, so ``a/b.jpg`` is a nested group) with
  ``keypoints`` (N, 2) in original-image pixels, hloc's convention: the centre of the top-left
  pixel is (0, 0) and hloc adds 0.5 when importing into COLMAP (we do the same in
  ``recon.colmap``); an ``uncertainty`` attribute on ``keypoints``; ``descriptors`` (D, N);
  ``scores`` (N,); ``image_size`` (2,) = (width, height). hloc stores fp16 by default; we store
  float32, which hloc reads unchanged.
``matches.h5``: one group per pair, named by :func:`names_to_pair`
  (``name0.replace('/', '-') + '/' + name1.replace('/', '-')``, i.e. nested groups) with
  ``matches0`` (N0,) (index into image 1's keypoints, -1 for none) and ``matching_scores0`` (N0,).
  hloc writes int16, which overflows past 32,767 keypoints; we write int32. The old
  ``name0-name1`` with ``_`` separator naming is read too, in either order.
``global-descriptors.h5``: ``/<name>/global_descriptor`` (D,).

Every write goes through :class:`H5Writer`, which appends to a temporary copy and renames it over
the target when closed, so a killed run never leaves a corrupt HDF5 file; entries already present
are kept and reported by :func:`list_names` so interrupted stages resume.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np

PathLike = str | os.PathLike


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: ``name0.replace('/', '-') + separator + name1.replace('/', '-')``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    """hloc's pre-1.4 pair key (underscore separator), still read."""
    return names_to_pair(name0, name1, separator="_")


def find_pair(hfile: h5py.File, name0: str, name1: str) -> tuple[str, bool]:
    """Return the key of pair (name0, name1) in ``hfile`` and whether it is stored reversed."""
    for make in (names_to_pair, names_to_pair_old):
        if make(name0, name1) in hfile:
            return make(name0, name1), False
        if make(name1, name0) in hfile:
            return make(name1, name0), True
    raise KeyError(f"pair ({name0}, {name1}) is not in {hfile.filename}")


class H5Writer:
    """Append groups to an HDF5 file atomically: work on ``<file>.tmp``, rename on close.

    Use as a context manager: leaving the block normally publishes the file; leaving it with an
    exception (including Ctrl-C) discards what was written since the last ``flush()``, so a
    half-written entry is never published. ``flush()`` publishes what has been written so far (a
    copy of the temporary file renamed over the target), which is how long stages checkpoint.
    ``fresh=True`` starts from an empty file instead of the published one (files rewritten whole;
    HDF5 does not reclaim the space of deleted groups).

    Long stages call :meth:`checkpoint` after each item: it publishes at most every
    ``CHECKPOINT_SECONDS``, and never so often that copying the file takes more than
    ``COPY_SHARE`` of the wall time (a multi-GB ``matches.h5`` takes seconds to copy).
    """

    CHECKPOINT_SECONDS = 5.0
    COPY_SHARE = 0.05

    def __init__(self, path: PathLike, fresh: bool = False) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not fresh:
            shutil.copyfile(self.path, self.tmp)
        elif self.tmp.exists():
            self.tmp.unlink()  # leftover of a killed run that never published: untrusted
        self.file = h5py.File(self.tmp, "a", libver="latest")
        self._published_at = time.monotonic()
        self._copy_seconds = 0.0

    def __enter__(self) -> "H5Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __contains__(self, key: str) -> bool:
        return key in self.file

    def delete(self, key: str) -> None:
        if key in self.file:
            del self.file[key]

    def flush(self) -> None:
        """Publish everything written so far.

        The file is closed first: a copy of an HDF5 file that is open for writing keeps the
        "open for write" consistency flag and cannot be opened by readers.
        """
        start = time.monotonic()
        self.file.close()
        staged = self.path.with_name(self.path.name + ".staged")
        shutil.copyfile(self.tmp, staged)
        os.replace(staged, self.path)
        self.file = h5py.File(self.tmp, "a", libver="latest")
        self._published_at = time.monotonic()
        self._copy_seconds = self._published_at - start

    def checkpoint(self) -> bool:
        """Publish if it is due (see the class doc); return whether it did."""
        due = max(self.CHECKPOINT_SECONDS, self._copy_seconds / self.COPY_SHARE)
        if time.monotonic() - self._published_at < due:
            return False
        self.flush()
        return True

    def close(self) -> None:
        """Publish the file (rename over the target)."""
        if self.file:
            self.file.close()
            self.file = None
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop everything written since the last publish; the target keeps its content."""
        if self.file:
            self.file.close()
            self.file = None
            self.tmp.unlink(missing_ok=True)


def write_features(writer: H5Writer, name: str, keypoints: np.ndarray, descriptors: np.ndarray | None,
                   scores: np.ndarray | None, image_size: tuple[int, int], uncertainty: float = 1.0) -> None:
    """Write one image's local features in hloc's layout.

    keypoints: (N, 2) original-image pixels (hloc convention, top-left pixel centre at 0,0);
    descriptors: (D, N) - note the transpose relative to our models' (N, D) output;
    scores: (N,); image_size: (width, height).
    """
    writer.delete(name)
    group = writer.file.create_group(name)
    kp = group.create_dataset("keypoints", data=np.asarray(keypoints, np.float32).reshape(-1, 2))
    kp.attrs["uncertainty"] = float(uncertainty)
    if descriptors is not None:
        group.create_dataset("descriptors", data=np.asarray(descriptors, np.float32))
    if scores is not None:
        group.create_dataset("scores", data=np.asarray(scores, np.float32).reshape(-1))
    group.create_dataset("image_size", data=np.asarray(image_size, np.int64).reshape(2))


def write_matches(writer: H5Writer, name0: str, name1: str, matches0: np.ndarray,
                  scores0: np.ndarray | None = None) -> None:
    """Write one pair's matches as hloc does: ``matches0`` (N0,) int32, -1 = unmatched."""
    key = names_to_pair(name0, name1)
    writer.delete(key)
    group = writer.file.create_group(key)
    matches0 = np.asarray(matches0).reshape(-1)
    group.create_dataset("matches0", data=matches0.astype(np.int32))
    if scores0 is None:
        scores0 = (matches0 > -1).astype(np.float32)
    group.create_dataset("matching_scores0", data=np.asarray(scores0, np.float32).reshape(-1))


def write_global_descriptor(writer: H5Writer, name: str, descriptor: np.ndarray) -> None:
    writer.delete(name)
    writer.file.create_group(name).create_dataset(
        "global_descriptor", data=np.asarray(descriptor, np.float32).reshape(-1))


def list_names(path: PathLike) -> list[str]:
    """Every group that holds datasets (image names or pair keys), as hloc's ``list_h5_names``."""
    if not Path(path).exists():
        return []
    names: list[str] = []
    with h5py.File(path, "r", libver="latest") as f:
        f.visititems(lambda key, obj: names.append(key.rsplit("/", 1)[0]) if isinstance(obj, h5py.Dataset) else None)
    return sorted(set(names))


@contextlib.contextmanager
def opened(source: PathLike | h5py.File) -> Iterator[h5py.File]:
    """Use an already open file as is (loops over many entries open it once), else open it."""
    if isinstance(source, h5py.File):
        yield source
    else:
        with h5py.File(source, "r", libver="latest") as f:
            yield f


def read_keypoints(path: PathLike | h5py.File, name: str) -> np.ndarray:
    """(N, 2) float32 keypoints of ``name`` (hloc's ``get_keypoints``)."""
    with opened(path) as f:
        return f[name]["keypoints"][()].astype(np.float32)


def read_features(path: PathLike | h5py.File, name: str) -> dict[str, np.ndarray]:
    """All datasets of one image's group, as float32 / int arrays (descriptors stay (D, N))."""
    with opened(path) as f:
        group = f[name]
        out = {k: group[k][()] for k in group.keys()}
    for key, value in out.items():
        if value.dtype == np.float16:
            out[key] = value.astype(np.float32)
    return out


def read_matches(path: PathLike | h5py.File, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) index pairs into (name0, name1) keypoints and (M,) scores (hloc's ``get_matches``)."""
    with opened(path) as f:
        key, reverse = find_pair(f, name0, name1)
        matches0 = f[key]["matches0"][()]
        scores0 = f[key]["matching_scores0"][()] if "matching_scores0" in f[key] else np.ones(len(matches0))
    idx = np.where(matches0 != -1)[0]
    matches = np.stack([idx, matches0[idx]], -1).astype(np.int64)
    if reverse:
        matches = np.flip(matches, -1).copy()
    return matches, scores0[idx].astype(np.float32)


def has_pair(source: PathLike | h5py.File, name0: str, name1: str) -> bool:
    """Whether the pair is in a matches file (a path, or an already open file), in either order."""
    if not isinstance(source, h5py.File) and not Path(source).exists():
        return False
    with opened(source) as f:
        try:
            find_pair(f, name0, name1)
            return True
        except KeyError:
            return False


def read_stamp(path: PathLike) -> str | None:
    """The configuration fingerprint a stage recorded in its output file (None if absent)."""
    if not Path(path).exists():
        return None
    with h5py.File(path, "r") as f:
        return f.attrs.get("recon_fingerprint")


def read_global_descriptors(path: PathLike, names: Iterable[str]) -> np.ndarray:
    """(N, D) global descriptors in the order of ``names``."""
    with h5py.File(path, "r", libver="latest") as f:
        return np.stack([f[name]["global_descriptor"][()].astype(np.float32) for name in names])
