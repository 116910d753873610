"""LoFTR, the detector-free transformer matcher, with the architecture GIM trained (see :mod:`.model`)."""
from .model import LocalFeatureTransformer, LoFTR, ResNetFPN82

__all__ = ["LoFTR", "LocalFeatureTransformer", "ResNetFPN82"]
