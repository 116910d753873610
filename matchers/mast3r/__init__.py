"""MASt3R (naver/mast3r): pair network, fast reciprocal matching, grid-anchored keypoint matches,
and the retrieval checkpoint (token whitening + ASMK codebook) its scene graph uses.

``matchers.load("mast3r", weights=PATH | "official")`` builds the network the checkpoint describes
(see :mod:`.model`); ``weights=None`` gives the released architecture with random weights.
"""
from .matching import EncoderCache, load_image, match_images_to_hloc, match_pair, prepare_image
from .model import AsymmetricMASt3R, Encoding, model_from_checkpoint, parse_constructor
from .retrieval import load_retrieval_checkpoint, local_features

__all__ = ["AsymmetricMASt3R", "EncoderCache", "Encoding", "load_image", "load_retrieval_checkpoint",
           "local_features", "match_images_to_hloc", "match_pair", "model_from_checkpoint",
           "parse_constructor", "prepare_image"]
