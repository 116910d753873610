"""Backbones shared by several networks: DINOv2 ViT (RoMa, OmniGlue, Depth Pro), CroCo ViT (MASt3R), VGG and ResNet (RoMa, DKM)."""
