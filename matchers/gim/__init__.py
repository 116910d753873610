"""GIM (Shen et al., ICLR 2024): RoMa, DKMv3 and LoFTR retrained on internet videos (xuelunshen/gim).

The architectures are the official ones (:class:`matchers.roma.RoMa`, :class:`matchers.dkm.DKMv3`,
and :class:`matchers.loftr.LoFTR`, which is GIM's own LoFTR variant);
what GIM changes is the inference recipe in its ``networks/roma/roma.py``,
``networks/dkm/models/dkm.py`` and ``demo.py``, reproduced by the configurations below:
- images in [0, 1] without ImageNet normalisation, resized bilinearly (no antialiasing);
- GIM_RoMa at 672 x 672, upsampled pass 1344 x 1344, refiner displacement scale relative to the
  coarse resolution (``scale_reference = 672``: factor 1 in the first pass, 2 in the second);
- GIM_DKM at 672 x 896 (H x W), upsampled pass 1152 x 1536;
- each image zero-padded (centred) to the model's aspect ratio before matching, matches in the
  padding dropped, and certainties of (near-)black input pixels (all channels < 1/32) zeroed;
- full precision everywhere (GIM has no autocast); 5000 sampled matches (``demo.py``);
- GIM_LoFTR at the image's own size, RGB in [0, 1], each side resized down to a multiple of 8
  (``demo.py``'s ``preprocess(dfactor=8)``), every coarse match above 0.2 kept (no sampling).

Checkpoints are PyTorch-Lightning files: the network's keys sit under ``ckpt["state_dict"]``
with the prefix ``model.``, which is stripped; GIM_DKM's loader also drops every key containing
``encoder.net.fc`` (the ImageNet classifier of the ResNet-50, unused by DKM). GIM_RoMa needs the
official DINOv2 ViT-L/14 file (``dinov2_vitl14_pretrain.pth``) like RoMa. GIM_LoFTR's checkpoint
is read as ``demo.py`` reads it: ``ckpt["state_dict"]`` as is, no prefix stripped (its keys are
LoFTR's own). The files are shared through Google Drive / OneDrive only (links in the GIM
README), so they must be placed by hand in ``$RECON_WEIGHTS`` or passed as a path.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from .. import weights as weights_registry
from ..dkm import DKMv3
from ..loftr import LoFTR
from ..roma import RoMa
from ..roma import load_weights as load_weights

GIM_README = "https://github.com/xuelunshen/gim#readme"

GIM_RECIPE: dict[str, Any] = {
    "interpolation": "bilinear",
    "antialias": False,
    "normalize": False,
    "mask_black": True,
    "pad_to_aspect": True,
    "max_matches": 5000,
}


def lightning_state_dict(raw: Any, drop_containing: tuple[str, ...] = (), prefix: str = "model."
                         ) -> dict[str, torch.Tensor]:
    """The network's flat state dict from a GIM Lightning checkpoint (or an already flat dict).

    Takes ``raw["state_dict"]`` when present, strips one leading ``prefix`` from each key (none
    when empty) and drops keys containing any of ``drop_containing`` (what GIM's ``demo.py``
    loader does).
    """
    state = raw["state_dict"] if isinstance(raw, dict) and "state_dict" in raw else raw
    return {(key[len(prefix):] if prefix and key.startswith(prefix) else key): value for key, value in state.items()
            if not any(part in key for part in drop_containing)}


def gim_dkm_state_dict(raw: Any) -> dict[str, torch.Tensor]:
    """GIM_DKM: Lightning prefix removed and the ResNet classifier (``encoder.net.fc.*``) dropped."""
    return lightning_state_dict(raw, drop_containing=("encoder.net.fc",))


def gim_loftr_state_dict(raw: Any) -> dict[str, torch.Tensor]:
    """GIM_LoFTR: ``ckpt["state_dict"]`` unchanged (its keys carry no prefix)."""
    return lightning_state_dict(raw, prefix="")


weights_registry.register_checkpoint(weights_registry.Checkpoint(
    name="gim_roma_100h", url="", filename="gim_roma_100h.ckpt", license="MIT (xuelunshen/gim)",
    extract=lightning_state_dict, allowlist=weights_registry.LIGHTNING_ALLOWLIST,
    notes=f"Download gim_roma_100h.ckpt from the Google Drive / OneDrive link in {GIM_README}."))
weights_registry.register_checkpoint(weights_registry.Checkpoint(
    name="gim_dkm_100h", url="", filename="gim_dkm_100h.ckpt", license="MIT (xuelunshen/gim)",
    extract=gim_dkm_state_dict, allowlist=weights_registry.LIGHTNING_ALLOWLIST,
    notes=f"Download gim_dkm_100h.ckpt from the Google Drive / OneDrive link in {GIM_README}."))
weights_registry.register_checkpoint(weights_registry.Checkpoint(
    name="gim_loftr_50h", url="", filename="gim_loftr_50h.ckpt", license="MIT (xuelunshen/gim)",
    extract=gim_loftr_state_dict, allowlist=weights_registry.LIGHTNING_ALLOWLIST,
    notes=f"Download gim_loftr_50h.ckpt from the Google Drive / OneDrive link in {GIM_README}."))


class GIMRoMa(RoMa):
    """GIM_RoMa: RoMa's architecture with GIM's weights and inference recipe (see module doc)."""

    checkpoint_layout: ClassVar[str | None] = "gim_roma_100h"
    default_conf: ClassVar[dict[str, Any]] = {
        **RoMa.default_conf, **GIM_RECIPE,
        "coarse_res": (672, 672), "upsample_res": (1344, 1344), "scale_reference": 672, "amp": False,
    }


class GIMDKM(DKMv3):
    """GIM_DKM: DKMv3 (ResNet-50) with GIM's weights and inference recipe (see module doc)."""

    checkpoint_layout: ClassVar[str | None] = "gim_dkm_100h"
    default_conf: ClassVar[dict[str, Any]] = {
        **DKMv3.default_conf, **GIM_RECIPE,
        "coarse_res": (672, 896), "upsample_res": (1152, 1536),
    }


class GIMLoFTR(LoFTR):
    """GIM_LoFTR: GIM's LoFTR with its weights; the recipe (RGB, sides floored to multiples of 8,
    threshold 0.2) is :class:`matchers.loftr.LoFTR`'s default, as GIM ships that architecture only."""


__all__ = ["GIMDKM", "GIMLoFTR", "GIMRoMa", "gim_dkm_state_dict", "gim_loftr_state_dict", "lightning_state_dict",
           "load_weights"]
