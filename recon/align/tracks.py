"""Multi-view tracks from pairwise verified matches.

Every keypoint is a node, every verified match an edge; a track is a connected component (the
union-find of COLMAP's correspondence graph, done by ``scipy.sparse.csgraph``). A track that
holds two or more keypoints of one image is inconsistent there (a match chain went astray): its
observations in that image are dropped, the rest of the track is kept, and tracks left with
fewer than two images disappear.

With ``cut_apart``, a component holding two keypoints of one image at least that far apart (two
points joined, not one point detected twice) first loses its matches that no third keypoint
confirms (none is matched to both ends), as long as some match of it is confirmed; the
components are then formed again, and one whose parts would still hold an image twice keeps
all its matches. A true match of a point seen in three or more images usually closes a
triangle; a wrong one joining the tracks of two points cannot, as its ends belong to different
points. Without the cut, the images that see both points lose both observations: on the
3,000-image synthetic survey (20 % wrong raw matches, 0.25 % of them verified) the tracks hold
620 of the 688 true observations per image without it and 684 with it (measured cutting every
inconsistent component; on the 1,000-image survey under 0.5 % of the keypoint pairs in
conflict lie within 4 px, while on the real scenes 37-47 % do: one point detected twice).
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


def build_tracks(num_keypoints: np.ndarray, pairs: np.ndarray, matches: list[np.ndarray],
                 keypoints: list[np.ndarray] | None = None, cut_apart: float | None = None) -> Tracks:
    """Tracks of the matches of ``pairs``.

    num_keypoints: (N,) keypoints per image; pairs: (P, 2) image indices; matches: P arrays
    (M_p, 2) of keypoint indices into the pair's two images. With ``keypoints`` (N arrays
    (K_n, 2), pixels) and ``cut_apart`` (px), components holding two keypoints of one image at
    least that far apart get their unconfirmed matches cut (module docstring).
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
    u, v = inverse[:len(a)], inverse[len(a):]
    image = np.searchsorted(offsets, nodes, side="right") - 1
    keypoint = nodes - offsets[image]
    labels = _components(len(nodes), u, v)
    single = _single_in_image(labels, image, len(num_keypoints))
    if cut_apart is not None and not single.all():
        conflicting = _far_apart(labels, image, np.concatenate(keypoints)[nodes], ~single, cut_apart,
                                 len(num_keypoints))
        if conflicting.any():
            labels = _cut_unconfirmed(labels, u, v, image, conflicting, len(num_keypoints))
            single = _single_in_image(labels, image, len(num_keypoints))
    return _compact(image[single], keypoint[single], labels[single])


def _cut_unconfirmed(labels: np.ndarray, u: np.ndarray, v: np.ndarray, image: np.ndarray, conflicting: np.ndarray,
                     num_images: int) -> np.ndarray:
    """New node labels after cutting the unconfirmed matches (edges (u, v)) of the ``conflicting``
    components, keeping a component whole where its parts would still hold an image twice."""
    keep = ~_unconfirmed(len(labels), u, v, conflicting[labels[u]], labels)
    cut = _components(len(labels), u[keep], v[keep])
    unresolved = np.zeros(labels.max() + 1, dtype=bool)
    unresolved[labels[~_single_in_image(cut, image, num_images)]] = True
    return np.where(unresolved[labels] | ~conflicting[labels], labels, labels.max() + 1 + cut)


def _components(num_nodes: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(num_nodes,) component label of every node of the graph with edges (u, v)."""
    graph = coo_matrix((np.ones(len(u)), (u, v)), shape=(num_nodes, num_nodes))
    return connected_components(graph, directed=False)[1]


def _far_apart(labels: np.ndarray, image: np.ndarray, xy: np.ndarray, twice: np.ndarray, distance: float,
               num_images: int) -> np.ndarray:
    """(components,) bool: the component holds two keypoints of one image at least ``distance``
    apart (bounding-box diagonal of its keypoints there), from the nodes' labels, images, pixels
    (n, 2) and ``twice`` (n,) (the node shares its component and image with another)."""
    key = labels[twice] * num_images + image[twice]
    order = np.argsort(key, kind="stable")
    key, points = key[order], xy[twice][order]
    _, start = np.unique(key, return_index=True)
    spread = np.linalg.norm(np.maximum.reduceat(points, start) - np.minimum.reduceat(points, start), axis=1)
    far = np.zeros(labels.max() + 1, dtype=bool)
    far[key[start][spread >= distance] // num_images] = True
    return far


def _single_in_image(labels: np.ndarray, image: np.ndarray, num_images: int) -> np.ndarray:
    """(nodes,) bool: the node is its component's only node in its image."""
    _, slot, count = np.unique(labels * num_images + image, return_inverse=True, return_counts=True)
    return count[slot] == 1


def _unconfirmed(num_nodes: int, u: np.ndarray, v: np.ndarray, candidate: np.ndarray,
                 labels: np.ndarray) -> np.ndarray:
    """(E,) bool: the ``candidate`` edges (u, v) that no node is adjacent to both ends of, in
    components (``labels``) where some candidate edge is so confirmed."""
    cu, cv = u[candidate], v[candidate]
    graph = coo_matrix((np.ones(2 * len(cu)), (np.r_[cu, cv], np.r_[cv, cu])), shape=(num_nodes, num_nodes)).tocsr()
    graph.data[:] = 1.0  # a match listed twice is one edge
    common = np.asarray((graph @ graph)[cu, cv]).ravel()
    confirmed_component = np.zeros(labels.max() + 1, dtype=bool)
    confirmed_component[labels[cu[common > 0]]] = True
    unconfirmed = np.zeros(len(u), dtype=bool)
    unconfirmed[np.flatnonzero(candidate)] = (common == 0) & confirmed_component[labels[cu]]
    return unconfirmed


def _compact(image: np.ndarray, keypoint: np.ndarray, track: np.ndarray) -> Tracks:
    """Drop tracks with fewer than two observations, renumber tracks 0..T-1, sort by track."""
    ids, inverse, count = np.unique(track, return_inverse=True, return_counts=True)
    keep = count[inverse] >= 2
    _, renumbered = np.unique(inverse[keep], return_inverse=True)
    order = np.argsort(renumbered, kind="stable")
    return Tracks(image[keep][order].astype(np.int64), keypoint[keep][order].astype(np.int64),
                  renumbered[order].astype(np.int64))
