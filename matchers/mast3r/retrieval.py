"""MASt3R retrieval checkpoint: pre-whitening of encoder tokens and the ASMK codebook.

MASt3R-SfM's retrieval reuses the encoder tokens (the same ones the matcher decodes; see
:class:`~matchers.mast3r.matching.EncoderCache`): tokens are PCA-whitened, ``x' = (x - m) P``
(float64, cast back), each token's attention is ``|x'|``, and the ``nfeat`` most attentive tokens
are the image's local descriptors for ASMK with the checkpoint's codebook.

Files (official layout, both in one folder):
- ``..._retrieval_trainingfree.pth``: ``{'model': {'prewhiten.m': (1, D) f64, 'prewhiten.p': (D, D) f64},
  'args': Namespace(nfeat, nclusters, imsize, hdims='', postwhiten=None, ...)}``, read with
  ``weights_only=True`` and only ``argparse.Namespace`` allowed;
- ``..._retrieval_codebook.pkl``: ``{'type': 'Codebook', 'params': {'size': K}, 'state':
  {'centroids': float32 (K, D)}}``, a pickle read by an unpickler that admits nothing but numpy
  arrays (no code runs). Its name is the checkpoint's with the last ``_``-field replaced by
  ``codebook.pkl``, as officially.
"""
from __future__ import annotations

import argparse
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..weights import Checkpoint, WeightsNotFoundError, checkpoints, load_file, register_checkpoint, resolve
from .model import CHECKPOINT_NAME

RETRIEVAL_NAME = f"{CHECKPOINT_NAME}_retrieval_trainingfree"
CODEBOOK_NAME = f"{CHECKPOINT_NAME}_retrieval_codebook"


@dataclass(frozen=True)
class RetrievalCheckpoint:
    """Whitening ``m`` (1, D) and ``p`` (D, D) float64, ASMK ``codebook`` (K, D) float32, and the
    options the official Retriever reads (``nfeat`` tokens kept per image, ``imsize``)."""

    prewhiten_m: torch.Tensor
    prewhiten_p: torch.Tensor
    codebook: np.ndarray
    nfeat: int
    imsize: int
    args: dict[str, Any]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else."""

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a codebook file")
        return super().find_class(module, name)


def read_codebook(path: str | os.PathLike, expected_size: Any = None) -> np.ndarray:
    """ASMK codebook centroids (K, D) float32 from the official pickle (numpy arrays only)."""
    with open(path, "rb") as f:
        data = _NumpyOnlyUnpickler(f).load()
    if not (isinstance(data, dict) and data.get("type") == "Codebook"):
        raise ValueError(f"{path}: not an ASMK codebook pickle")
    if expected_size is not None and data["params"]["size"] != expected_size:
        raise ValueError(f"{path}: codebook size {data['params']['size']!r} != checkpoint nclusters {expected_size!r}")
    return np.ascontiguousarray(data["state"]["centroids"], dtype=np.float32)


def codebook_path_for(checkpoint_path: str | os.PathLike) -> Path:
    """Official rule: ``a_b_..._trainingfree.pth`` -> ``a_b_..._codebook.pkl`` in the same folder."""
    path = Path(checkpoint_path)
    return path.with_name("_".join(path.name.split("_")[:-1]) + "_codebook.pkl")


def load_retrieval_checkpoint(weights: str | os.PathLike = RETRIEVAL_NAME,
                              codebook: str | os.PathLike | None = None) -> RetrievalCheckpoint:
    """Load a MASt3R retrieval checkpoint and its codebook (registered names or paths).

    Only the released "training-free" kind is supported (identity projector, no post-whitening).
    """
    path = resolve(weights)
    raw = load_file(path, allowlist=(argparse.Namespace,))
    args = vars(raw["args"]) if isinstance(raw["args"], argparse.Namespace) else dict(raw["args"])
    if args.get("hdims") or args.get("postwhiten") is not None or args.get("featweights", "l2norm") != "l2norm":
        raise ValueError(f"{path}: only the released training-free retrieval checkpoints are supported (args {args})")
    state = raw["model"]
    if set(state) != {"prewhiten.m", "prewhiten.p"}:
        raise ValueError(f"{path}: expected prewhiten.m and prewhiten.p, found {sorted(state)}")
    if codebook is None:
        codebook = codebook_path_for(path)
        if not codebook.is_file() and CODEBOOK_NAME in checkpoints() and str(weights) == RETRIEVAL_NAME:
            codebook = resolve(CODEBOOK_NAME)
    if not Path(codebook).is_file():
        raise WeightsNotFoundError(f"ASMK codebook {codebook} not found (it must sit next to {path})")
    return RetrievalCheckpoint(state["prewhiten.m"].double(), state["prewhiten.p"].double(),
                               read_codebook(codebook, args.get("nclusters")), int(args["nfeat"]),
                               int(args.get("imsize", 512)), args)


def whiten(tokens: torch.Tensor, ckpt: RetrievalCheckpoint) -> torch.Tensor:
    """(..., D) encoder tokens -> whitened tokens (x - m) P, computed in float64, same dtype out."""
    m, p = ckpt.prewhiten_m.to(tokens.device), ckpt.prewhiten_p.to(tokens.device)
    return ((tokens.double() - m) @ p).to(tokens.dtype)


def local_features(tokens: torch.Tensor, ckpt: RetrievalCheckpoint) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ASMK local descriptors of encoded images: (B, N, D) tokens -> the ``nfeat`` most attentive
    whitened tokens (B, n, D), their attention |x'| (B, n) in descending order, token index (B, n)."""
    feat = whiten(tokens, ckpt)
    attention = feat.norm(dim=-1)
    top, idx = torch.topk(attention, min(ckpt.nfeat, attention.shape[1]), dim=1)
    return torch.gather(feat, 1, idx[..., None].expand(-1, -1, feat.shape[-1])), top, idx


_BASE = "https://download.europe.naverlabs.com/ComputerVision/MASt3R/"
for _name, _suffix in ((RETRIEVAL_NAME, ".pth"), (CODEBOOK_NAME, ".pkl")):
    register_checkpoint(Checkpoint(
        name=_name, url=_BASE + _name + _suffix, filename=_name + _suffix,
        license="CC BY-NC-SA 4.0 (non-commercial; see naver/mast3r CHECKPOINTS_NOTICE)",
        notes="MASt3R retrieval: the .pth and the _codebook.pkl must sit in the same folder.",
        allowlist=(argparse.Namespace,),
    ))
