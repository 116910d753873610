"""Every model recon knows, by name. One line per model; modules load lazily.

Each family's module registers its checkpoints in ``matchers.weights`` when imported; the names
here are the ones configs and ``matchers.load`` use.
"""
from __future__ import annotations

from . import register

register("sift", ".sift", "SIFT")
register("nearest_neighbor", ".nearest_neighbor", "NearestNeighbor")

# DINOv2 backbones (facebookresearch/dinov2 hub models; shared by RoMa, OmniGlue, Depth Pro).
register("dinov2_vits14", ".backbones.dinov2", "dinov2_vits14", default_weights="dinov2_vits14_pretrain")
register("dinov2_vitb14", ".backbones.dinov2", "dinov2_vitb14", default_weights="dinov2_vitb14_pretrain")
register("dinov2_vitl14", ".backbones.dinov2", "dinov2_vitl14", default_weights="dinov2_vitl14_pretrain")
register("dinov2_vits14_reg", ".backbones.dinov2", "dinov2_vits14_reg", default_weights="dinov2_vits14_reg4_pretrain")
register("dinov2_vitb14_reg", ".backbones.dinov2", "dinov2_vitb14_reg", default_weights="dinov2_vitb14_reg4_pretrain")
register("dinov2_vitl14_reg", ".backbones.dinov2", "dinov2_vitl14_reg", default_weights="dinov2_vitl14_reg4_pretrain")

# Depth Pro (apple/ml-depth-pro): metric depth + focal length; its ViTs are backbones.dinov2.
register("depth_pro", ".depth_pro", "DepthPro", default_weights="depth_pro")
