"""The pictures a reconstruction run leaves next to its model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from ..io import h5
from ..io.images import read_image
from .matches import plot_matches
from .model import render_model


def strongest_pairs(database_path: Path, count: int) -> list[tuple[str, str, np.ndarray]]:
    """The ``count`` pairs with the most verified inliers: (name0, name1, inlier index pairs)."""
    with pycolmap.Database.open(database_path) as db:
        names = {image.image_id: image.name for image in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
    ranked = sorted(zip(pair_ids, geometries), key=lambda item: -len(item[1].inlier_matches))[:count]
    result = []
    for pair_id, geometry in ranked:
        id0, id1 = pycolmap.pair_id_to_image_pair(pair_id)
        result.append((names[id0], names[id1], np.asarray(geometry.inlier_matches)))
    return result


def write_run_pictures(model: pycolmap.Reconstruction, output_dir: Path, image_dir: Path, database_path: Path,
                       features_path: Path, matches_path: Path, num_pairs: int = 2) -> list[Path]:
    """``cameras.png`` (top view of the model) and ``plots/matches-*.png`` for the strongest pairs."""
    written = [output_dir / "cameras.png"]
    render_model(model, written[0])
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    for name0, name1, inliers in strongest_pairs(database_path, num_pairs):
        matches, _ = h5.read_matches(matches_path, name0, name1)
        kp0, kp1 = h5.read_keypoints(features_path, name0), h5.read_keypoints(features_path, name1)
        size1 = len(kp1)  # pair (i, j) as one integer, so membership is a vectorised isin
        is_inlier = np.isin(matches[:, 0] * size1 + matches[:, 1],
                            inliers[:, 0].astype(np.int64) * size1 + inliers[:, 1].astype(np.int64))
        stem0, stem1 = (Path(n).with_suffix("").as_posix().replace("/", "-") for n in (name0, name1))
        path = plots / f"matches-{stem0}--{stem1}.png"
        plot_matches(read_image(image_dir / name0), read_image(image_dir / name1),
                     kp0[matches[:, 0]], kp1[matches[:, 1]], path, inliers=is_inlier)
        written.append(path)
    return written
