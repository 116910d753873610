"""SuperPoint "sp_v6": the TensorFlow SuperPoint of rpautrat/SuperPoint that OmniGlue uses.

It differs from Magic Leap's network (``matchers/superpoint.py``) in its layers: every
convolution is followed by ReLU (except the two head outputs) and then BatchNorm (eps 1e-3, the
Keras default). Parameter names are those of rpautrat's PyTorch port (``superpoint_pytorch.py``,
``VGGBlock = Sequential(conv, activation, bn)``), so its ``superpoint_v6_from_tf.pth`` loads
strictly::

    backbone.{0..3}.{0,1}.{conv,bn}.*   (VGG, 2x2 max-pool after blocks 0..2)
    detector.{0,1}.{conv,bn}.*          (128 -> 256 -> 65)
    descriptor.{0,1}.{conv,bn}.*        (128 -> 256 -> 256)

Our converter maps the TF variables ``superpoint/vgg/conv{i}_{j}/...`` onto the same keys
(:func:`tf_name_to_torch`, the rule of rpautrat's ``convert_to_pytorch.ipynb``).

Post-processing follows rpautrat's PyTorch port (defaults: NMS radius 4, threshold 0.005,
4 border pixels removed, which is also ``simple_nms`` here); OmniGlue keeps the 1024 best.
Descriptors are sampled the way the TF graph does it: the TF graph upsamples the coarse
descriptor map x8 with ``tf.image.resize_bilinear`` (TF1 legacy coordinates: output pixel x reads
input position x / 8, clamped at the border) and L2-normalises; OmniGlue reads it at integer
keypoints. :func:`sample_descriptors_tf` computes exactly those values without building the
full-resolution map. Deviations from the TF graph, both as in rpautrat's PyTorch port: NMS is the
max-pool NMS (the graph runs box NMS, ``NonMaxSuppressionV3`` on 2r+1 boxes), and 4 border
pixels are removed (the graph has no border step). The node names of sp_v6's ``saved_model.pb``
(``superpoint/pred_tower0/map/while/box_nms/...``, ``descriptor/ResizeBilinear`` followed by
``descriptor/l2_normalize``, ``DepthToSpace``) confirm the graph's side of this description.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from torch import nn

from .base import BaseModel
from .keypoints import select_keypoints
from .weights import Checkpoint, StateDict, register_checkpoint

BN_EPS = 1e-3  # Keras BatchNormalization default, kept by the PyTorch port


def superpoint_v6_state_dict(raw: dict[str, Any]) -> StateDict:
    """rpautrat's flat ``superpoint_v6_from_tf.pth``, or the ``superpoint`` entry of our
    converter's output (``python -m matchers.omniglue.convert``)."""
    state = raw["superpoint"] if "superpoint" in raw else raw
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


register_checkpoint(Checkpoint(
    name="superpoint_v6_from_tf",
    url="https://github.com/rpautrat/SuperPoint/raw/master/weights/superpoint_v6_from_tf.pth",
    filename="superpoint_v6_from_tf.pth",
    license="MIT (rpautrat/SuperPoint)",
    extract=superpoint_v6_state_dict,
    notes="PyTorch conversion of sp_v6 (the TF SavedModel OmniGlue downloads as sp_v6.tgz).",
))


class VGGBlock(nn.Sequential):
    """conv -> ReLU (or identity) -> BatchNorm, under the port's names ``conv``/``activation``/``bn``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, relu: bool = True) -> None:
        super().__init__(OrderedDict([
            ("conv", nn.Conv2d(c_in, c_out, kernel_size, padding=(kernel_size - 1) // 2)),
            ("activation", nn.ReLU(inplace=True) if relu else nn.Identity()),
            ("bn", nn.BatchNorm2d(c_out, eps=BN_EPS)),
        ]))


def tf_name_to_torch(name: str) -> str:
    """The torch key of one sp_v6 TF variable, e.g. ``superpoint/vgg/conv2_1/bn/gamma`` ->
    ``backbone.1.0.bn.weight`` and ``superpoint/detector/conv2/conv/kernel`` -> ``detector.1.conv.weight``."""
    parts = name.split("/")
    if len(parts) != 5 or parts[0] != "superpoint":
        raise KeyError(f"not an sp_v6 SuperPoint variable: '{name}'")
    _, group, layer, op, leaf = parts
    leaves = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
              "moving_mean": "running_mean", "moving_variance": "running_var"}
    if leaf not in leaves or op not in ("conv", "bn"):
        raise KeyError(f"unexpected sp_v6 variable '{name}'")
    if group == "vgg":
        stage, conv = layer.removeprefix("conv").split("_")
        prefix = f"backbone.{int(stage) - 1}.{int(conv) - 1}"
    elif group in ("detector", "descriptor"):
        prefix = f"{group}.{int(layer.removeprefix('conv')) - 1}"
    else:
        raise KeyError(f"unexpected sp_v6 variable '{name}'")
    return f"{prefix}.{op}.{leaves[leaf]}"


def sample_descriptors_tf(keypoints: torch.Tensor, descriptors: torch.Tensor, s: int = 8) -> torch.Tensor:
    """Descriptors of the TF graph at keypoints: the x``s`` legacy bilinear upsampling
    (full-resolution pixel x reads coarse position x / s, clamped to the map), then L2 norm.

    Args:
        keypoints: ``(B, N, 2)`` x, y in full-resolution pixels.
        descriptors: ``(B, D, h, w)`` coarse map.

    Returns:
        ``(B, N, D)`` unit descriptors.
    """
    b, c, h, w = descriptors.shape
    size = keypoints.new_tensor([max(w - 1, 1), max(h - 1, 1)])
    grid = (keypoints / s) / size * 2 - 1
    sampled = F.grid_sample(descriptors, grid.view(b, 1, -1, 2), mode="bilinear",
                            padding_mode="border", align_corners=True)
    return F.normalize(sampled.reshape(b, c, -1), p=2, dim=1).transpose(1, 2)


class SuperPointV6(BaseModel):
    """sp_v6 SuperPoint. Input ``{"image": (B, 1|3, H, W) in [0, 1]}`` (RGB -> gray with
    0.299/0.587/0.114), H and W multiples of 8. Output ``keypoints`` (B, N, 2) integer pixel
    positions (x, y), ``descriptors`` (B, N, 256) unit, ``scores`` (B, N), best first."""

    default_conf = {
        "nms_radius": 4,
        "max_num_keypoints": 1024,
        "detection_threshold": 0.005,
        "remove_borders": 4,
        "descriptor_dim": 256,
    }
    default_resize_max = 1024
    required_inputs = ("image",)
    kind = "extractor"
    grayscale = True

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        channels = [1, 64, 64, 128, 128]
        self.backbone = nn.Sequential(*[
            nn.Sequential(VGGBlock(channels[i], channels[i + 1], 3), VGGBlock(channels[i + 1], channels[i + 1], 3),
                          *([nn.MaxPool2d(2, 2)] if i < 3 else []))
            for i in range(4)])
        self.detector = nn.Sequential(VGGBlock(128, 256, 3), VGGBlock(256, 65, 1, relu=False))
        self.descriptor = nn.Sequential(VGGBlock(128, 256, 3),
                                        VGGBlock(256, self.conf["descriptor_dim"], 1, relu=False))

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense outputs of a ``(B, 1, H, W)`` image: keypoint probabilities ``(B, H, W)`` (softmax
        over 65 cells, dustbin dropped, depth-to-space) and the raw coarse descriptors ``(B, D, H/8, W/8)``."""
        features = self.backbone(image)
        prob = F.softmax(self.detector(features), 1)[:, :-1]
        prob = F.pixel_shuffle(prob, 8)[:, 0]
        return prob, self.descriptor(features)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(data)
        image = data["image"]
        if image.shape[1] == 3:
            image = rgb_to_grayscale(image)
        if image.shape[-1] % 8 or image.shape[-2] % 8:
            raise ValueError(f"SuperPointV6 needs H and W multiples of 8, got {tuple(image.shape[-2:])}")
        prob, coarse = self.encode(image)
        keypoints, scores = select_keypoints(prob, self.conf["nms_radius"], self.conf["remove_borders"],
                                             self.conf["detection_threshold"], self.conf["max_num_keypoints"],
                                             "SuperPointV6")
        return {"keypoints": keypoints, "descriptors": sample_descriptors_tf(keypoints, coarse, 8), "scores": scores}
