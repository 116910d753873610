"""Every model recon knows, by name. One line per model; modules load lazily.

Each family's module registers its checkpoints in ``matchers.weights`` when imported; the names
here are the ones configs and ``matchers.load`` use.
"""
from __future__ import annotations

from . import register

register("sift", ".sift", "SIFT")
register("nearest_neighbor", ".nearest_neighbor", "NearestNeighbor")

# Sparse learned features (issue 7). Extractors: keypoints in the input tensor's pixels; map them
# to the original image with matchers.keypoints.keypoints_to_original (hloc convention).
register("aliked", ".aliked", "ALIKED", default_weights="aliked-n16")
register("aliked-t16", ".aliked", "ALIKED", default_weights="aliked-t16", model_name="aliked-t16")
register("aliked-n16rot", ".aliked", "ALIKED", default_weights="aliked-n16rot", model_name="aliked-n16rot")
register("aliked-n32", ".aliked", "ALIKED", default_weights="aliked-n32", model_name="aliked-n32")
register("disk", ".disk", "DISK", default_weights="disk-depth")
register("superpoint", ".superpoint", "SuperPoint", default_weights="superpoint_v1")
register("gim_superpoint", ".superpoint", "SuperPoint", default_weights="gim_superpoint",
         nms_radius=3, detection_threshold=0.0, max_num_keypoints=2048)
# LightGlue: one name per official weight set ("official" then works); "lightglue" takes any
# LightGlue checkpoint by name or path, with features=superpoint|aliked|disk.
register("lightglue", ".lightglue", "LightGlue", loader="load_weights")
register("superpoint_lightglue", ".lightglue", "LightGlue", default_weights="superpoint_lightglue",
         loader="load_weights", features="superpoint")
register("aliked_lightglue", ".lightglue", "LightGlue", default_weights="aliked_lightglue",
         loader="load_weights", features="aliked")
register("disk_lightglue", ".lightglue", "LightGlue", default_weights="disk_lightglue",
         loader="load_weights", features="disk")
register("gim_lightglue", ".lightglue", "LightGlue", default_weights="gim_lightglue",
         loader="load_weights", features="superpoint", depth_confidence=-1.0, width_confidence=-1.0, flash=False)
# Not a network: exact correspondences of a rendered scene, standing in for a dense network in tests.
register("ground_truth_dense", "recon.datasets.oracle", "GroundTruthDenseMatcher")
register("mast3r", ".mast3r", "AsymmetricMASt3R", default_weights="MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
         builder="model_from_checkpoint")

# DINOv2 backbones (facebookresearch/dinov2 hub models; shared by RoMa, OmniGlue, Depth Pro).
register("dinov2_vits14", ".backbones.dinov2", "dinov2_vits14", default_weights="dinov2_vits14_pretrain")
register("dinov2_vitb14", ".backbones.dinov2", "dinov2_vitb14", default_weights="dinov2_vitb14_pretrain")
register("dinov2_vitl14", ".backbones.dinov2", "dinov2_vitl14", default_weights="dinov2_vitl14_pretrain")
register("dinov2_vits14_reg", ".backbones.dinov2", "dinov2_vits14_reg", default_weights="dinov2_vits14_reg4_pretrain")
register("dinov2_vitb14_reg", ".backbones.dinov2", "dinov2_vitb14_reg", default_weights="dinov2_vitb14_reg4_pretrain")
register("dinov2_vitl14_reg", ".backbones.dinov2", "dinov2_vitl14_reg", default_weights="dinov2_vitl14_reg4_pretrain")

# Depth Pro (apple/ml-depth-pro): metric depth + focal length; its ViTs are backbones.dinov2.
register("depth_pro", ".depth_pro", "DepthPro", default_weights="depth_pro")

# OmniGlue (issue 9): sp_v6 SuperPoint + DINOv2 ViT-B/14 features concatenated into (256 + 768)-d
# descriptors, and the matcher converted from the official TF SavedModel (matchers/omniglue/convert.py).
register("omniglue_superpoint", ".omniglue", "OmniGlueSuperPoint", default_weights="superpoint_v6_from_tf",
         loader="load_weights")
register("superpoint_v6", ".superpoint_v6", "SuperPointV6", default_weights="superpoint_v6_from_tf")
register("omniglue", ".omniglue", "OmniGlue", default_weights="omniglue")
register("roma_outdoor", ".roma", "RoMa", default_weights="roma_outdoor", loader="load_weights")
register("roma_indoor", ".roma", "RoMa", default_weights="roma_indoor", loader="load_weights")
register("gim_roma", ".gim", "GIMRoMa", default_weights="gim_roma_100h", loader="load_weights")
register("gim_dkm", ".gim", "GIMDKM", default_weights="gim_dkm_100h", loader="load_weights")
register("gim_loftr", ".gim", "GIMLoFTR", default_weights="gim_loftr_50h")
register("tiny_roma_v1_outdoor", ".roma.tiny", "TinyRoMa", default_weights="tiny_roma_v1_outdoor")
