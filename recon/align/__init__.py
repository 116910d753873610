"""Global alignment of pair-network predictions into cameras and points (MASt3R-SfM's sparse
global alignment, :mod:`.sparse_ga`)."""
from .sparse_ga import AlignmentInput, AlignmentOptions, AlignmentResult, gamma_loss, sparse_global_alignment

__all__ = ["AlignmentInput", "AlignmentOptions", "AlignmentResult", "gamma_loss", "sparse_global_alignment"]
