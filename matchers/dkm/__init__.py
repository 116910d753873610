"""DKMv3 dense matcher (Parskatt/DKM, as used by GIM) in plain torch with the official names."""
from .model import CAB, DFN, RRB, DKMv3, ResNetEncoder, dkm_decoder

__all__ = ["CAB", "DFN", "RRB", "DKMv3", "ResNetEncoder", "dkm_decoder"]
