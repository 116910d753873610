"""Shared backbones (plain torch, official parameter names): DINOv2 ViT, VGG19-BN, ResNet-50."""
