"""Every model recon knows, by name. One line per model; modules load lazily.

Each family's module registers its checkpoints in ``matchers.weights`` when imported; the names
here are the ones configs and ``matchers.load`` use.
"""
from __future__ import annotations

from . import register

register("sift", ".sift", "SIFT")
register("nearest_neighbor", ".nearest_neighbor", "NearestNeighbor")
register("mast3r", ".mast3r", "AsymmetricMASt3R", default_weights="MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
         builder="model_from_checkpoint")
