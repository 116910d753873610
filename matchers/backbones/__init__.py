"""Backbones shared by several model families (DINOv2 ViT for RoMa, OmniGlue and Depth Pro)."""
