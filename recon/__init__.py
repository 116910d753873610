"""recon: from a folder of photos to a COLMAP model, in hloc's formats, on PyTorch."""
__version__ = "0.1.0"
