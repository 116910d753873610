"""Every model recon knows, by name. One line per model; modules load lazily.

Each family's module registers its checkpoints in ``matchers.weights`` when imported; the names
here are the ones configs and ``matchers.load`` use.
"""
from __future__ import annotations

from . import register

register("sift", ".sift", "SIFT")
register("nearest_neighbor", ".nearest_neighbor", "NearestNeighbor")
# Not a network: exact correspondences of a rendered scene, standing in for a dense network in tests.
register("ground_truth_dense", "recon.datasets.oracle", "GroundTruthDenseMatcher")
