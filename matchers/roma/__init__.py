"""RoMa dense matcher (Parskatt/RoMa) in plain torch with the official parameter names."""
from .model import CNNandDinov2, DenseMatcher, RoMa, load_weights, roma_decoder

__all__ = ["CNNandDinov2", "DenseMatcher", "RoMa", "load_weights", "roma_decoder"]
