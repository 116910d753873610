"""An alignment result as a ``pycolmap.Reconstruction``: cameras, posed images whose 2D points are
the anchors, and one 3D point per track of matched anchors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycolmap
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .sparse_ga import AlignmentInput, AlignmentResult


@dataclass
class ModelLayout:
    """How the alignment's indices map to COLMAP: per image its name and id, per camera its id
    and model (images with camera index c get camera ``camera_ids[c]``)."""

    image_names: list[str]
    image_ids: list[int]
    camera_ids: list[int]
    camera_models: list[str]


def tracks(data: AlignmentInput, used: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Tracks as connected components of the used matches: (anchors (T,), track id (T,)) with one
    anchor per image and track (the first) and only tracks seen in at least two images."""
    used = used.to(data.match0.device)  # the alignment may have run on another device
    a, b = data.match0[used].cpu().numpy(), data.match1[used].cpu().numpy()
    count = data.anchor_image.shape[0]
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(count, count)), directed=False)
    image = data.anchor_image.cpu().numpy()
    matched = np.unique(np.concatenate((a, b)))
    _, first = np.unique(label[matched] * (image.max() + 1) + image[matched], return_index=True)
    anchors = matched[first]
    views = np.bincount(label[anchors], minlength=count)
    anchors = anchors[views[label[anchors]] >= 2]
    _, track = np.unique(label[anchors], return_inverse=True)
    return anchors, track


def to_reconstruction(data: AlignmentInput, result: AlignmentResult, layout: ModelLayout) -> pycolmap.Reconstruction:
    """Cameras with the aligned focal and principal point (extra parameters 0), images posed
    cam_from_world with every anchor as a 2D point, 3D points at the mean of their anchors' aligned
    positions."""
    rec = pycolmap.Reconstruction()
    sizes = data.image_size.cpu().numpy()
    camera_of = data.image_camera.cpu().numpy()
    focal, pp = result.focal.detach().cpu().double().numpy(), result.principal_point.detach().cpu().double().numpy()
    for c, (camera_id, model) in enumerate(zip(layout.camera_ids, layout.camera_models)):
        width, height = sizes[np.flatnonzero(camera_of == c)[0]].round().astype(int)
        camera = pycolmap.Camera.create_from_model_name(camera_id, model, float(focal[c]), int(width), int(height))
        camera.principal_point_x, camera.principal_point_y = float(pp[c, 0]), float(pp[c, 1])
        rec.add_camera_with_trivial_rig(camera)
    image_of = data.anchor_image.cpu().numpy()
    keypoints = data.keypoints.detach().cpu().double().numpy()
    order = np.argsort(image_of, kind="stable")
    starts = np.searchsorted(image_of[order], np.arange(data.num_images))
    slot = np.empty(len(order), np.int64)  # index of each anchor among its image's 2D points
    slot[order] = np.arange(len(order)) - starts[image_of[order]]
    rotation, translation = result.rotation.detach().cpu().double().numpy(), result.translation.detach().cpu().double().numpy()
    for k in range(data.num_images):  # pycolmap objects, one per image
        rows = order[starts[k]:starts[k] + np.count_nonzero(image_of == k)]
        image = pycolmap.Image(name=layout.image_names[k], camera_id=layout.camera_ids[camera_of[k]],
                               image_id=layout.image_ids[k],
                               points2D=pycolmap.Point2DList([pycolmap.Point2D(xy) for xy in keypoints[rows]]))
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(rotation[k]), translation[k]))
    anchors, track = tracks(data, result.used_matches)
    points = result.points.detach().cpu().double().numpy()
    num_tracks = int(track.max()) + 1 if len(track) else 0
    centres = np.zeros((num_tracks, 3))
    np.add.at(centres, track, points[anchors])
    centres /= np.bincount(track, minlength=num_tracks)[:, None]
    by_track = np.argsort(track, kind="stable")
    bounds = np.searchsorted(track[by_track], np.arange(num_tracks + 1))
    ids = np.asarray(layout.image_ids)
    for t in range(num_tracks):  # pycolmap objects, one per 3D point
        members = anchors[by_track[bounds[t]:bounds[t + 1]]]
        element = pycolmap.Track()
        element.add_elements([pycolmap.TrackElement(int(ids[image_of[m]]), int(slot[m])) for m in members])
        rec.add_point3D(centres[t], element)
    rec.update_point_3d_errors()  # pycolmap reports stored errors, not recomputed ones
    return rec
