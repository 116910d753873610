"""Global alignment: cameras and points from many pairwise measurements at once.

MASt3R-SfM's sparse global alignment of pair-network pointmaps (:mod:`.sparse_ga`), and the
phases of recon's global mapper (:mod:`recon.mapping.recon_global`), each usable alone:

* :mod:`.view_graph` - the database's verified pairs as a graph of relative poses; focal lengths
  of uncalibrated cameras from the fundamental matrices; largest connected component.
* :mod:`.rotation_averaging` - global rotations from relative ones (spanning-tree start, robust
  IRLS on the rotation Lie algebra).
* :mod:`.tracks` - multi-view tracks from pairwise matches (connected components), with
  inconsistent observations removed.
* :mod:`.positioning` - camera centres and points jointly from ray directions (BATA objective).
* :mod:`.triangulation` - multi-view triangulation, reprojection errors and triangulation angles
  for the refinement loop.

Conventions are COLMAP's: rotations are ``cam_from_world`` (x_cam = R x_world + t); a pair
``(i, j)`` carries ``cam_j_from_cam_i``.
"""
from .sparse_ga import AlignmentInput, AlignmentOptions, AlignmentResult, gamma_loss, sparse_global_alignment

__all__ = ["AlignmentInput", "AlignmentOptions", "AlignmentResult", "gamma_loss", "sparse_global_alignment"]
