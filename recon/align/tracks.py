"""Multi-view tracks from pairwise verified matches.

Every keypoint is a node, every verified match an edge; a track is a connected component (the
union-find of COLMAP's correspondence graph, done by ``scipy.sparse.csgraph``). A track that
holds two or more keypoints of one image is inconsistent there (a match chain went astray): its
observations in that image are dropped, the rest of the track is kept, and tracks left with
fewer than two images disappear.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class Tracks:
    """Observations of T tracks, sorted by track (M observations).

    image: (M,) image index; keypoint: (M,) keypoint index within the image; track: (M,) track
    index in [0, T), each image at most once per track.
    """

    image: np.ndarray
    keypoint: np.ndarray
    track: np.ndarray

    @property
    def num_tracks(self) -> int:
        return int(self.track.max()) + 1 if len(self.track) else 0

    def lengths(self) -> np.ndarray:
        """(T,) observations per track."""
        return np.bincount(self.track, minlength=self.num_tracks)

    def select(self, keep: np.ndarray) -> "Tracks":
        """Observations where ``keep`` (M,) is True, tracks with < 2 left dropped, renumbered."""
        return _compact(self.image[keep], self.keypoint[keep], self.track[keep])


def build_tracks(num_keypoints: np.ndarray, pairs: np.ndarray, matches: list[np.ndarray]) -> Tracks:
    """Tracks of the matches of ``pairs``.

    num_keypoints: (N,) keypoints per image; pairs: (P, 2) image indices; matches: P arrays
    (M_p, 2) of keypoint indices into the pair's two images.
    """
    offsets = np.concatenate([[0], np.cumsum(num_keypoints)]).astype(np.int64)
    if len(pairs) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Tracks(empty, empty, empty)
    a = np.concatenate([offsets[i] + m[:, 0] for (i, _), m in zip(pairs, matches)])
    b = np.concatenate([offsets[j] + m[:, 1] for (_, j), m in zip(pairs, matches)])
    # The matched keypoints, numbered in order (np.unique's nodes and inverse without its sort of
    # all 2E ends: 17M of them on the 3,000-image survey).
    matched = np.zeros(offsets[-1], dtype=bool)
    matched[a] = True
    matched[b] = True
    nodes = np.flatnonzero(matched)
    number = np.cumsum(matched) - 1
    inverse = number[np.concatenate([a, b])]
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a)), (inverse[:len(a)], inverse[len(a):])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    image = np.searchsorted(offsets, nodes, side="right") - 1
    keypoint = nodes - offsets[image]
    _, slot, count = np.unique(labels * len(num_keypoints) + image, return_inverse=True, return_counts=True)
    consistent = count[slot] == 1
    return _compact(image[consistent], keypoint[consistent], labels[consistent])


def _compact(image: np.ndarray, keypoint: np.ndarray, track: np.ndarray) -> Tracks:
    """Drop tracks with fewer than two observations, renumber tracks 0..T-1, sort by track."""
    ids, inverse, count = np.unique(track, return_inverse=True, return_counts=True)
    keep = count[inverse] >= 2
    _, renumbered = np.unique(inverse[keep], return_inverse=True)
    order = np.argsort(renumbered, kind="stable")
    return Tracks(image[keep][order].astype(np.int64), keypoint[keep][order].astype(np.int64),
                  renumbered[order].astype(np.int64))
