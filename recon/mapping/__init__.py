"""Mappers: a COLMAP database (cameras, keypoints, verified matches) in, a model out.

Every mapper is registered in :data:`MAPPERS` with its typed options and is called as
``mapper(database_path, image_dir, output_dir, conf, device, seed) -> pycolmap.Reconstruction`` (the
largest model). COLMAP's incremental and global mappers are the references; recon's own global
mapper (``recon_global``, :mod:`.recon_global`) plugs in the same way.
"""
from __future__ import annotations

from ..stages import StageRegistry

MAPPERS = StageRegistry("mapper")

from . import colmap_mappers  # noqa: E402,F401  (registers colmap_incremental, colmap_global)
from . import mast3r_sga  # noqa: E402,F401  (registers mast3r_sga)
from . import recon_global  # noqa: E402,F401  (registers recon_global)
