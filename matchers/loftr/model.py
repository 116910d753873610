"""LoFTR (Sun et al., CVPR 2021) as GIM ships it (xuelunshen/gim ``networks/loftr``), in plain torch.

Detector-free matching in two levels:
1. a ResNet-50 + FPN backbone (:class:`ResNetFPN82`) gives coarse features at 1/8 (256-d) and
   fine features at 1/2 (128-d) of the input;
2. the coarse features, plus a sine positional encoding, pass 4 (self, cross) blocks of a
   linear-attention transformer (:class:`LocalFeatureTransformer`);
3. coarse matches are mutual nearest neighbours of the dual-softmax confidence, above a
   threshold and away from the border;
4. for each coarse match a 5 x 5 window of fine features is cropped around the cell in both
   images, refined by 1 (self, cross) block, and the centre of window 0 is located in window 1
   by soft-argmax (expectation), giving a sub-pixel position in image 1 (image 0's position
   stays at its coarse cell).

GIM's variant differs from zju3dv/LoFTR's release in its backbone (torchvision ResNet-50 layers
1-3 without the max-pool, under ``backbone.encode``, fed RGB instead of grey) and uses the
positional encoding with ``temp_bug_fix=False``. Parameter names follow GIM's modules, so
``gim_loftr_50h.ckpt``'s ``state_dict`` loads strictly. The architecture sizes are those of
``LoFTR(lower_config(get_cfg_defaults())["loftr"])`` (GIM's ``demo.py``).

Keypoints follow hloc's convention (centre of the top-left pixel at (0, 0)): LoFTR's coarse
position of cell (r, c) is pixel (8c, 8r) of the network input and its fine offsets are in
input pixels; its supervision samples depth at those integer positions (pixel centres), and
hloc's ``match_dense`` rescales LoFTR's keypoints as hloc-convention ones (``+0.5``, scale, ``-0.5``).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.resnet import ResNet50
from ..base import BaseModel, ConfigError
from ..keypoints import keypoints_to_original
from .ops import (border_mask, crop_windows, dual_softmax, fine_expectation, linear_attention,
                  mutual_nearest_matches, sine_position_encoding)

# GIM's get_cfg_defaults()["loftr"]: the sizes its checkpoint was trained with.
BLOCK_DIMS = (64, 128, 196, 256, 512, 1024)  # resnetfpn.block_dims
COARSE_DIM, FINE_DIM = 256, 128  # coarse.d_model, fine.d_model
HEADS = 8  # coarse.nhead, fine.nhead
COARSE_BLOCKS, FINE_BLOCKS = 4, 1  # coarse.layer_names, fine.layer_names: (self, cross) repeats
COARSE_STRIDE, FINE_STRIDE = 8, 2  # resolution (8, 2)


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, bias=False)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class ResNetFPN82(nn.Module):
    """GIM's ``ResNetFPN_8_2``: (B, 3, H, W) -> coarse (B, 256, H/8, W/8), fine (B, 128, H/2, W/2).

    ``encode`` is torchvision's ResNet-50 stem and ``layer1``-``layer3`` run WITHOUT the max-pool,
    so the stages sit at strides 2, 4, 8 (256, 512, 1024 channels); a top-down FPN merges them
    (1x1 lateral convolutions, 2x bilinear upsampling with aligned corners, 3x3 conv - BN -
    LeakyReLU - 3x3 conv). H and W must be multiples of 8.
    """

    def __init__(self, block_dims: tuple[int, ...] = BLOCK_DIMS) -> None:
        super().__init__()
        d = block_dims
        self.encode = ResNet50(stages=3)
        self.layer3_outconv = conv1x1(d[5], d[3])
        self.layer2_outconv = conv1x1(d[4], d[3])
        self.layer2_outconv2 = nn.Sequential(conv3x3(d[3], d[3]), nn.BatchNorm2d(d[3]), nn.LeakyReLU(),
                                             conv3x3(d[3], d[2]))
        self.layer1_outconv = conv1x1(d[3], d[2])
        self.layer1_outconv2 = nn.Sequential(conv3x3(d[2], d[2]), nn.BatchNorm2d(d[2]), nn.LeakyReLU(),
                                             conv3x3(d[2], d[1]))
        for module in self.modules():  # the official initialisation (random-weight runs stay sane)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.encode
        x1 = net.layer1(net.relu(net.bn1(net.conv1(x))))  # 1/2
        x2 = net.layer2(x1)  # 1/4
        x3 = net.layer3(x2)  # 1/8
        coarse = self.layer3_outconv(x3)
        x2_out = self.layer2_outconv2(self.layer2_outconv(x2) + upsample2(coarse))
        fine = self.layer1_outconv2(self.layer1_outconv(x1) + upsample2(x2_out))
        return coarse, fine


class EncoderLayer(nn.Module):
    """One LoFTR attention layer: ``x + LN(MLP([x, LN(merge(attention(x, source)))]))``.

    Linear attention over ``heads`` heads (projections without bias); the MLP sees the input and
    the message concatenated (2C -> 2C -> C).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.merge = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim, bias=False), nn.ReLU(True),
                                 nn.Linear(2 * dim, dim, bias=False))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """x (B, L, C) attends to source (B, S, C) -> (B, L, C)."""
        b, _, c = x.shape
        split = (b, -1, self.heads, c // self.heads)
        message = linear_attention(self.q_proj(x).view(split), self.k_proj(source).view(split),
                                   self.v_proj(source).view(split))
        message = self.norm1(self.merge(message.reshape(b, -1, c)))
        return x + self.norm2(self.mlp(torch.cat((x, message), dim=2)))


class LocalFeatureTransformer(nn.Module):
    """``blocks`` x (self, cross) attention layers over two feature sets (B, L, C), (B, S, C).

    In a cross layer image 0 is updated first and image 1 then attends to the UPDATED image 0
    (the official order).
    """

    def __init__(self, dim: int, heads: int, blocks: int) -> None:
        super().__init__()
        self.kinds = ("self", "cross") * blocks
        self.layers = nn.ModuleList(EncoderLayer(dim, heads) for _ in self.kinds)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, feat0: torch.Tensor, feat1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer, kind in zip(self.layers, self.kinds):
            if kind == "self":
                feat0, feat1 = layer(feat0, feat0), layer(feat1, feat1)
            else:
                feat0 = layer(feat0, feat1)
                feat1 = layer(feat1, feat0)
        return feat0, feat1


class LoFTR(BaseModel):
    """LoFTR dense matcher (GIM's architecture; see the module docstring).

    ``forward({"image0", "image1": (1, 3, H_i, W_i) RGB in [0, 1]})`` -> ``{"keypoints0",
    "keypoints1": (M, 2) pixels of each input image (hloc convention), "scores": (M,) coarse
    dual-softmax confidence}``. Each image is resized (bilinear) to the nearest lower multiple of
    ``size_divisor`` per side, as GIM's ``demo.py`` does, and keypoints are mapped back.
    :meth:`match_tensors` is the network on already sized tensors, in LoFTR's own terms.

    LoFTR has no dense warp, so unlike RoMa it cannot match given keypoints (no
    ``match_keypoints``).
    """

    kind = "dense_matcher"
    required_inputs = ("image0", "image1")
    default_conf: ClassVar[dict[str, Any]] = {
        "match_threshold": 0.2,  # match_coarse.thr on the dual-softmax confidence
        "border_rm": 2,  # coarse cells this close to an edge are not matched
        "dsmax_temperature": 0.1,
        "fine_window_size": 5,  # odd; the checkpoint was trained with 5
        "temp_bug_fix": False,  # positional encoding as trained (see ops.sine_position_encoding)
        "size_divisor": 8,  # GIM's dfactor: inputs resized to multiples of it (>= the coarse stride)
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        window, divisor = self.conf["fine_window_size"], self.conf["size_divisor"]
        if window < 1 or window % 2 == 0:
            raise ConfigError(f"{type(self).__name__}.fine_window_size must be odd and positive, got {window}")
        if divisor < COARSE_STRIDE or divisor % COARSE_STRIDE:
            raise ConfigError(f"{type(self).__name__}.size_divisor must be a multiple of {COARSE_STRIDE}, "
                              f"got {divisor}")
        self.backbone = ResNetFPN82()
        self.loftr_coarse = LocalFeatureTransformer(COARSE_DIM, HEADS, COARSE_BLOCKS)
        self.loftr_fine = LocalFeatureTransformer(FINE_DIM, HEADS, FINE_BLOCKS)

    # ---- the network -------------------------------------------------------------------------
    def extract(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Backbone features (coarse0, fine0, coarse1, fine1); one batch when the sizes agree."""
        if image0.shape == image1.shape:
            coarse, fine = self.backbone(torch.cat((image0, image1)))
            (coarse0, coarse1), (fine0, fine1) = coarse.chunk(2), fine.chunk(2)
            return coarse0, fine0, coarse1, fine1
        return (*self.backbone(image0), *self.backbone(image1))

    def encode_coarse(self, coarse0: torch.Tensor, coarse1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h_i, w_i) maps -> (B, h_i w_i, C) sequences after positional encoding + transformer."""
        sequences = []
        for coarse in (coarse0, coarse1):
            encoding = sine_position_encoding(coarse.shape[1], *coarse.shape[2:], self.conf["temp_bug_fix"],
                                              coarse.device)
            sequences.append((coarse + encoding.to(coarse.dtype)).flatten(2).transpose(1, 2))
        return self.loftr_coarse(*sequences)

    @torch.inference_mode()
    def match_tensors(self, image0: torch.Tensor, image1: torch.Tensor) -> dict[str, torch.Tensor]:
        """LoFTR on (B, 3, H_i, W_i) images whose sides are multiples of 8.

        Returns ``b_ids`` (M,), ``keypoints0``/``keypoints1`` (M, 2) in these tensors' pixels
        (``mkpts0_f``/``mkpts1_f``) and ``scores`` (M,) (``mconf``).
        """
        for name, image in (("image0", image0), ("image1", image1)):
            if image.ndim != 4 or image.shape[1] != 3 or image.shape[2] % COARSE_STRIDE or image.shape[3] % COARSE_STRIDE:
                raise ValueError(f"{type(self).__name__}: {name} must be (B, 3, H, W) with H and W multiples of "
                                 f"{COARSE_STRIDE}, got {tuple(image.shape)}")
        coarse0, fine0, coarse1, fine1 = self.extract(image0, image1)
        (h0, w0), (h1, w1) = coarse0.shape[2:], coarse1.shape[2:]
        feat0, feat1 = self.encode_coarse(coarse0, coarse1)
        border = self.conf["border_rm"]
        b_ids, i_ids, j_ids, scores = mutual_nearest_matches(
            dual_softmax(feat0, feat1, self.conf["dsmax_temperature"]), self.conf["match_threshold"],
            border_mask(h0, w0, border, feat0.device), border_mask(h1, w1, border, feat1.device))
        keypoints0 = cell_positions(i_ids, w0) * COARSE_STRIDE
        keypoints1 = cell_positions(j_ids, w1) * COARSE_STRIDE
        if len(b_ids):
            window = self.conf["fine_window_size"]
            stride = COARSE_STRIDE // FINE_STRIDE
            windows0 = crop_windows(fine0, b_ids, i_ids, w0, stride, window)
            windows1 = crop_windows(fine1, b_ids, j_ids, w1, stride, window)
            offsets = fine_expectation(*self.loftr_fine(windows0, windows1))
            keypoints1 = keypoints1 + offsets * (window // 2) * FINE_STRIDE
        return {"b_ids": b_ids, "keypoints0": keypoints0, "keypoints1": keypoints1, "scores": scores}

    # ---- images in, matches out --------------------------------------------------------------
    def resize(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 3, H, W) -> resized to multiples of ``size_divisor`` and the (x, y) scale back."""
        divisor = self.conf["size_divisor"]
        height, width = image.shape[-2:]
        size = (height // divisor * divisor, width // divisor * divisor)
        if min(size) == 0:
            raise ValueError(f"{type(self).__name__}: image of {height} x {width} px is smaller than {divisor} px")
        scale = image.new_tensor((width / size[1], height / size[0]))
        if size != (height, width):
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return image, scale

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(data)
        images = [data["image0"], data["image1"]]
        if any(im.ndim != 4 or im.shape[:2] != (1, 3) for im in images):
            raise ValueError(f"{type(self).__name__} matches one RGB pair at a time: (1, 3, H, W) images, got "
                             f"{[tuple(im.shape) for im in images]}")
        (image0, scale0), (image1, scale1) = (self.resize(im.to(self.device).float()) for im in images)
        out = self.match_tensors(image0, image1)
        return {"keypoints0": keypoints_to_original(out["keypoints0"], scale0),
                "keypoints1": keypoints_to_original(out["keypoints1"], scale1), "scores": out["scores"]}


def cell_positions(cell_ids: torch.Tensor, width: int) -> torch.Tensor:
    """Row-major cell indices (M,) -> (M, 2) float (column, row)."""
    return torch.stack((cell_ids % width, cell_ids // width), dim=1).float()
