"""OmniGlue (google-research/omniglue, CVPR 2024) in PyTorch.

* :mod:`.extractor` - ``omniglue_superpoint``: sp_v6 SuperPoint keypoints with DINOv2 ViT-B/14
  features sampled at them, concatenated into (N, 256 + 768) descriptors.
* :mod:`.model` - ``omniglue``: the matcher (position-guided attention, DINOv2-pruned cross
  attention, optimal transport).
* :mod:`.convert` - TF SavedModel variables -> PyTorch checkpoint, with the variable mapping.
"""
from .extractor import OmniGlueSuperPoint, load_weights
from .model import OmniGlue

__all__ = ["OmniGlue", "OmniGlueSuperPoint", "load_weights"]
