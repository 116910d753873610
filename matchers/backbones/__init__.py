"""Backbones shared by several networks (DINOv2 ViT for RoMa, OmniGlue and Depth Pro; CroCo ViT)."""
