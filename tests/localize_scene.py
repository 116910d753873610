"""A synthetic localization problem with an exact answer, in hloc's files.

``pycolmap.synthesize_dataset`` gives a model with exact poses and noise-free observations. Some
images are taken out of the model and become queries; every image's 2D points are written as
its keypoints (hloc convention: COLMAP pixel - 0.5) and each query is "matched" to each map
image through the 3D points they both observe, exactly as a perfect matcher would.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from recon.io import h5


@dataclass
class Scene:
    model_dir: Path
    features: Path
    matches: Path
    retrieval: Path
    truth: pycolmap.Reconstruction   # every image with its exact pose
    queries: list[str]
    map_names: list[str]


def point_ids(image: pycolmap.Image) -> np.ndarray:
    return np.array([p.point3D_id if p.has_point3D() else -1 for p in image.points2D], dtype=np.int64)


def build_scene(folder: Path, num_images: int = 10, num_queries: int = 3, num_points: int = 300,
                focal: float = 1280.0, seed: int = 0) -> Scene:
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig, options.num_frames_per_rig = 1, 1, num_images
    options.num_points3D = num_points
    options.camera_params = [focal, 512.0, 384.0, 0.0]
    pycolmap.set_random_seed(seed)
    truth = pycolmap.synthesize_dataset(options)
    images = sorted(truth.images.values(), key=lambda im: im.name)
    queries = [im.name for im in images[-num_queries:]]
    map_names = [im.name for im in images[:-num_queries]]

    features = folder / "features.h5"
    with h5.H5Writer(features) as writer:
        for image in images:
            xy = np.array([p.xy for p in image.points2D]) - 0.5
            h5.write_features(writer, image.name, xy, np.zeros((8, len(xy))), np.ones(len(xy)), (1024, 768))
    matches = folder / "matches.h5"
    by_name = {im.name: im for im in images}
    with h5.H5Writer(matches) as writer:
        for query in queries:
            q_ids = point_ids(by_name[query])
            for name in map_names:
                d_ids = point_ids(by_name[name])
                index_of = {int(p): j for j, p in enumerate(d_ids) if p >= 0}
                h5.write_matches(writer, query, name, np.array([index_of.get(int(p), -1) if p >= 0 else -1
                                                                for p in q_ids]))
    retrieval = folder / "retrieval.txt"
    retrieval.write_text("".join(f"{q} {d}\n" for q in queries for d in map_names))

    model = pycolmap.Reconstruction(truth)
    for name in queries:
        model.deregister_frame(by_name[name].frame_id)
    model_dir = folder / "map"
    model_dir.mkdir()
    model.write(model_dir)
    return Scene(model_dir, features, matches, retrieval, truth, queries, map_names)
