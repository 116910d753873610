"""Every model recon knows, by name. One line per model; modules load lazily.

Each family's module registers its checkpoints in ``matchers.weights`` when imported; the names
here are the ones configs and ``matchers.load`` use.
"""
from __future__ import annotations

from . import register

register("sift", ".sift", "SIFT")
register("nearest_neighbor", ".nearest_neighbor", "NearestNeighbor")
register("roma_outdoor", ".roma", "RoMa", default_weights="roma_outdoor", loader="load_weights")
register("roma_indoor", ".roma", "RoMa", default_weights="roma_indoor", loader="load_weights")
register("gim_roma", ".gim", "GIMRoMa", default_weights="gim_roma_100h", loader="load_weights")
register("gim_dkm", ".gim", "GIMDKM", default_weights="gim_dkm_100h", loader="load_weights")
register("tiny_roma_v1_outdoor", ".roma.tiny", "TinyRoMa", default_weights="tiny_roma_v1_outdoor")
