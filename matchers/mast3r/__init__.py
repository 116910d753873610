"""MASt3R (naver/mast3r): pair network, fast reciprocal matching, grid-anchored keypoint matches.

``matchers.load("mast3r", weights=PATH | "official")`` builds the network the checkpoint describes
(see :mod:`.model`); ``weights=None`` gives the released architecture with random weights.
"""
from .model import AsymmetricMASt3R, Encoding, model_from_checkpoint, parse_constructor

__all__ = ["AsymmetricMASt3R", "Encoding", "model_from_checkpoint", "parse_constructor"]
