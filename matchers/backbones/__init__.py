"""Backbones shared by several networks (DINOv2 ViT, VGG, ResNet, CroCo ViT)."""
