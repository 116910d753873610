"""LightGlue (Lindenberger et al., 2023) through kornia's implementation, with official weights.

``kornia.feature.LightGlue`` (0.9.0) is the cvg/LightGlue network layer for layer: same module
names, rotary positional encoding, normalisation of keypoints by ``(k - size/2) / (max(size)/2)``
with ``size`` the (W, H) of the image the keypoints are expressed in, attention (SDPA for self-
attention, explicit softmax for cross-attention on CPU; fp16 SDPA on CUDA with ``flash``),
early stopping (``depth_confidence``), point pruning (``width_confidence``, on every layer on CPU,
above 1024 keypoints on CUDA, 1536 with flash) and mutual-nearest filtering at
``filter_threshold``. Checked against the official outputs in
``shared/fixtures/lightglue_aliked`` (``tests/test_sparse_fixtures.py``). Where kornia differs
from cvg/LightGlue it does not matter for fp32 single pairs: it raises for keypoints outside the
image (cvg/LightGlue silently matches them), runs the pairs of a pruning batch one at a time,
and prunes on every layer on MPS (cvg: above 1024 keypoints).

Adapter (what is ours): kornia's ``LightGlue(features=...)`` downloads weights itself. We build it
with ``features=None`` and register its submodules on this module under their official names, so
``state_dict()`` is the official layout and every official checkpoint loads *strictly* through
``matchers.weights`` (``$RECON_WEIGHTS``, hub cache, download), never through kornia's
downloader. Key handling, shared by every LightGlue checkpoint (:func:`lightglue_state_dict`):

* cvg release files before the ``transformers`` refactor name layers ``self_attn.{i}.*`` /
  ``cross_attn.{i}.*``: renamed to ``transformers.{i}.self_attn.*`` / ``...cross_attn.*``
  (what cvg/LightGlue and kornia do on load);
* ``disk_lightglue.pth`` also holds 9 unused tensors ``log_assignment.{i}.r`` that the official
  ``strict=False`` load ignores: dropped;
* GIM's ``gim_lightglue_100h.ckpt`` is a Lightning checkpoint: ``ckpt["state_dict"]`` holds the
  matcher under ``model.`` and the SuperPoint detector under ``superpoint.``; we keep the
  ``model.`` keys without the prefix (GIM's ``demo.py`` does the same);
* GIM's matcher is glue-factory's LightGlue, the same network. Keypoint normalisation: GIM's
  training code (branch ``train-gim-glue``) passes ``resize0[:, [1, 0]]`` = (W, H), the standard
  normalisation used here; GIM's ``demo.py`` on ``main`` passes ``image_size0`` = (W, H) into the
  same ``[:, [1, 0]]`` swap, i.e. normalises by (H, W), which shifts keypoints of non-square
  images off the training distribution. We follow training, not the demo;
* no checkpoint holds ``confidence_thresholds``: it is a buffer computed from ``n_layers`` in
  ``__init__``; the loader takes it from the freshly built model and loads the rest strictly.

Inputs (recon matcher interface): ``keypoints0/1`` (B, N, 2) pixels of the image whose size is
``image_size0/1`` (B, 2) = (W, H) (or give ``image0/1``), ``descriptors0/1`` (B, N, D).
Outputs: ``matches0`` (B, N0) long (-1 = unmatched), ``matching_scores0`` (B, N0), the same for
image 1, and LightGlue's diagnostics ``matches``, ``scores`` (lists), ``stop``, ``prune0/1``.
"""
from __future__ import annotations

import os
import re
from typing import Any

import torch
from kornia.feature.lightglue import LightGlue as KorniaLightGlue

from .base import BaseModel, ConfigError
from .weights import LIGHTNING_ALLOWLIST, Checkpoint, StateDict, load_state_dict, register_checkpoint

# Descriptor dimension of each feature type the official weights were trained on.
FEATURE_DIMS = {"superpoint": 256, "aliked": 128, "disk": 128}

_OLD_LAYER_NAME = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.")
_UNUSED_KEY = re.compile(r"^log_assignment\.\d+\.r$")


def lightglue_state_dict(raw: dict[str, Any]) -> StateDict:
    """The flat state dict of any official LightGlue checkpoint (see the module docstring)."""
    if "state_dict" in raw:  # GIM (Lightning): matcher under "model.", detector under "superpoint."
        raw = {k[len("model."):]: v for k, v in raw["state_dict"].items() if k.startswith("model.")}
    return {_OLD_LAYER_NAME.sub(r"transformers.\2.\1.", k): v for k, v in raw.items() if not _UNUSED_KEY.match(k)}


_RELEASE = "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv"
for _features in FEATURE_DIMS:
    register_checkpoint(Checkpoint(
        name=f"{_features}_lightglue",
        url=f"{_RELEASE}/{_features}_lightglue.pth",
        filename=f"{_features}_lightglue.pth",
        license="Apache-2.0 (cvg/LightGlue)",
        extract=lightglue_state_dict,
        notes=(f"cvg/LightGlue and kornia cache it as {_features}_lightglue_v0-1_arxiv.pth; "
               "that copy can be passed as a path."),
    ))
register_checkpoint(Checkpoint(
    name="gim_lightglue",
    url="https://github.com/xuelunshen/gim/raw/main/weights/gim_lightglue_100h.ckpt",
    filename="gim_lightglue_100h.ckpt",
    license="MIT (xuelunshen/gim)",
    extract=lightglue_state_dict,
    allowlist=LIGHTNING_ALLOWLIST,
    notes="GIM (ICLR 2024) SuperPoint+LightGlue trained on internet videos; the same file holds the "
          "detector (checkpoint 'gim_superpoint').",
))


class LightGlue(BaseModel):
    """LightGlue matcher. ``features`` (superpoint | aliked | disk) fixes the input descriptor
    dimension; the other options are cvg/LightGlue's, with its defaults."""

    default_conf = {
        "features": "superpoint",
        "descriptor_dim": 256,
        "n_layers": 9,
        "num_heads": 4,
        "flash": True,
        "mp": False,
        "depth_confidence": 0.95,
        "width_confidence": 0.99,
        "filter_threshold": 0.1,
    }
    required_inputs = ("keypoints0", "keypoints1", "descriptors0", "descriptors1")
    kind = "matcher"

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        features = self.conf["features"]
        if features not in FEATURE_DIMS:
            raise ConfigError(f"LightGlue.features: unknown '{features}', one of {sorted(FEATURE_DIMS)}")
        options = {k: v for k, v in self.conf.items() if k != "features"}
        net = KorniaLightGlue(features=None, input_dim=FEATURE_DIMS[features], **options)
        # Kornia's module runs the forward pass; its submodules are registered here under their
        # official names (shared objects), so .to(), .eval() and state_dict() act on them directly.
        object.__setattr__(self, "_net", net)
        for name, child in net.named_children():
            self.add_module(name, child)
        self.register_buffer("confidence_thresholds", net.confidence_thresholds.clone())

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, Any]:
        self.check_inputs(data)
        net = self._net
        net.confidence_thresholds = self.confidence_thresholds  # follows this module's device/dtype
        net.training = self.training
        views = []
        for i in "01":
            view = {"keypoints": data[f"keypoints{i}"], "descriptors": data[f"descriptors{i}"]}
            if f"image_size{i}" in data:
                view["image_size"] = data[f"image_size{i}"]
            elif f"image{i}" in data:
                view["image"] = data[f"image{i}"]
            else:
                raise KeyError(f"LightGlue needs image_size{i} (B, 2) = (W, H) or image{i} to normalise keypoints")
            views.append(view)
        out = net({"image0": views[0], "image1": views[1]})
        out.pop("log_assignment", None)
        return out


def load_weights(model: LightGlue, weights: str | os.PathLike) -> None:
    """Load an official LightGlue checkpoint (name or path) strictly; see the module docstring.

    ``confidence_thresholds`` is derived, not learned, and absent from every checkpoint."""
    state = load_state_dict(weights, entry="superpoint_lightglue")  # a path: all share one layout reader
    state["confidence_thresholds"] = model.confidence_thresholds
    model.load_state_dict(state, strict=True)
