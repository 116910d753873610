"""The 3D side of a model for localization: per-image 3D point ids, point coordinates, and
hloc's covisibility clustering of retrieved images (``pose_from_cluster``).

Retrieval can return images of several places that look alike; matching the query to all of
them at once mixes their 3D points in one PnP. hloc's answer: split the retrieved images into
connected components of the co-observation graph (two images are connected when they observe a
common 3D point) and estimate one pose per component, keeping the one with most inliers.
"""
from __future__ import annotations

import numpy as np
import pycolmap
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


class MapIndex:
    """Array views of a model's 3D structure, built once per model.

    pycolmap exposes ``image.points2D`` only as a list of objects, so the one pass that turns it
    into arrays happens here, lazily per image, and everything downstream is vectorised.
    """

    def __init__(self, model: pycolmap.Reconstruction) -> None:
        self.model = model
        self.ids_by_name = {image.name: image_id for image_id, image in model.images.items() if image.has_pose}
        point_ids = np.array(sorted(model.points3D.keys()), dtype=np.int64)
        self.xyz = np.array([model.points3D[int(i)].xyz for i in point_ids], dtype=np.float64).reshape(-1, 3)
        self.row_of_point = np.full(int(point_ids.max()) + 1 if len(point_ids) else 0, -1, dtype=np.int64)
        self.row_of_point[point_ids] = np.arange(len(point_ids))
        self._points: dict[int, np.ndarray] = {}

    def point3D_rows(self, image_id: int) -> np.ndarray:
        """(N2D,) row in :attr:`xyz` of the 3D point each keypoint of the image observes, -1 for none."""
        if image_id not in self._points:
            ids = np.array([p.point3D_id if p.has_point3D() else -1 for p in self.model.images[image_id].points2D],
                           dtype=np.int64)
            self._points[image_id] = np.where(ids >= 0, self.row_of_point[np.maximum(ids, 0)], -1)
        return self._points[image_id]


def covisibility_clusters(observed_points: list[np.ndarray], num_points: int) -> list[list[int]]:
    """Connected components of the co-observation graph of some images.

    observed_points: per image, the (K_i,) indices (in ``[0, num_points)``) of the 3D points it
    observes. Returns lists of positions into ``observed_points``, the largest cluster first (ties
    in order of first member), each in input order - hloc's ``do_covisibility_clustering``.
    """
    count = len(observed_points)
    if count == 0:
        return []
    rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(observed_points)])
    cols = np.concatenate(observed_points).astype(np.int64)
    incidence = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(count, max(num_points, 1)))
    _, labels = connected_components(incidence @ incidence.T, directed=False)
    clusters: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        clusters.setdefault(int(label), []).append(position)
    return sorted(clusters.values(), key=len, reverse=True)
