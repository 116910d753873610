"""Depth Pro (apple/ml-depth-pro): metric depth and focal length from one image.

Architecture and parameter names of the official ``DepthPro`` so ``depth_pro.pt`` loads
strictly: ``encoder.*`` (multi-scale patch ViT + image ViT, DINOv2-L/16 at 384 px inside a
1536-px input), ``decoder.*`` (multi-resolution fusion), ``head.*`` (canonical inverse depth) and
``fov.*`` (field of view with its own ViT). The released file stores fp16 tensors; loading copies
them into the module's float32 parameters, and :meth:`DepthPro.infer` runs in half precision on
CUDA and float32 on CPU (``precision`` option).

Inference as the official ``infer``: resize to 1536x1536 (bilinear), inputs in [-1, 1],
``f_px = W / 2 / tan(fov / 2)`` unless given, ``depth = 1 / clamp(canonical * W / f_px)``
resized back to the input size. ``canonical`` is the inverse depth the network predicts for a
focal length equal to the image width.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov2 import DinoVisionTransformer
from ..base import BaseModel
from ..weights import Checkpoint, register_checkpoint
from .decoder import FOVNetwork, MultiresConvDecoder
from .encoder import DepthProEncoder

register_checkpoint(Checkpoint(
    name="depth_pro",
    url="https://ml-site.cdn-apple.com/models/depth-pro/depth_pro.pt",
    filename="depth_pro.pt",
    license="Apple sample-code licence (apple/ml-depth-pro LICENSE; covers code and weights)",
    notes="Flat OrderedDict state dict in fp16, no prefix; loads strictly into float32 modules.",
))


class DepthPro(BaseModel):
    """Depth Pro network.

    Input of :meth:`forward`: ``{"image": (B, 3, H, W) RGB in [0, 1]}``, optionally
    ``"focal_px": (B,)`` known focal lengths in pixels of the input image.
    Output: ``depth`` (B, H, W) metric depth [m], ``focal_px`` (B,) the focal length used
    (estimated from the field of view unless given), ``fov_deg`` (B,) the predicted horizontal FOV.
    """

    kind = "depth"
    required_inputs = ("image",)
    default_conf = {
        # The three ViTs (patch, image and FOV encoders): timm vit_large_patch14_dinov2
        # resampled to 16-px patches and 384-px images, as Depth Pro's "dinov2l16_384" preset.
        # vit_img_size / patch_size must be 24 (the FOV head's token grid); the network
        # input is 4 * vit_img_size (1536).
        "vit_img_size": 384,
        "patch_size": 16,
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "init_values": 1e-5,
        "dims_encoder": [256, 512, 1024, 1024],
        "hook_block_ids": [5, 11],
        "decoder_features": 256,
        "last_dims": [32, 1],
        "precision": "auto",  # "auto": float16 on CUDA, float32 on CPU; or "float16"/"float32"
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        if c["precision"] not in ("auto", "float16", "float32"):
            raise ValueError(f"precision must be auto, float16 or float32, got {c['precision']!r}")
        if c["vit_img_size"] // c["patch_size"] != 24:
            # The FOV head ends in a 6x6 convolution over a 24 -> 12 -> 6 token grid.
            raise ValueError("Depth Pro needs 24x24-token ViT images (vit_img_size = 24 * patch_size)")
        dims, features = list(c["dims_encoder"]), c["decoder_features"]
        self.encoder = DepthProEncoder(dims, self._vit(), self._vit(), c["hook_block_ids"], features)
        self.decoder = MultiresConvDecoder([features] + dims, features)
        half, (last_hidden, last_out) = features // 2, c["last_dims"]
        self.head = nn.Sequential(
            nn.Conv2d(features, half, kernel_size=3, padding=1),
            nn.ConvTranspose2d(half, half, kernel_size=2, stride=2),
            nn.Conv2d(half, last_hidden, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_hidden, last_out, kernel_size=1),
            nn.ReLU(),
        )
        nn.init.zeros_(self.head[4].bias)
        self.fov = FOVNetwork(features, self._vit())

    def _vit(self) -> DinoVisionTransformer:
        c = self.conf
        # timm's ViT: no mask token; position embeddings resized by size with antialiasing.
        return DinoVisionTransformer(img_size=c["vit_img_size"], patch_size=c["patch_size"],
                                     embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
                                     init_values=c["init_values"], mask_token=False,
                                     interpolate_offset=0.0, interpolate_antialias=True)

    @property
    def img_size(self) -> int:
        """The network's input size (1536)."""
        return self.encoder.img_size

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official ``forward``: x (B, 3, 1536, 1536) in [-1, 1] ->
        canonical inverse depth (B, 1, 1536, 1536) and FOV in degrees (B, 1, 1, 1)."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"Depth Pro takes {self.img_size}x{self.img_size} inputs, got {tuple(x.shape[-2:])}")
        features, lowres = self.decoder(self.encoder(x))
        return self.head(features), self.fov(x, lowres.detach())

    def inference_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype :meth:`infer` runs in on ``device`` (``precision`` option)."""
        precision = self.conf["precision"]
        if precision == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return torch.float16 if precision == "float16" else torch.float32

    @torch.no_grad()
    def infer(self, x: torch.Tensor, f_px: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The official ``infer``: x (B, 3, H, W) or (3, H, W) in [-1, 1] (``(rgb - 0.5) / 0.5``).

        Returns ``depth`` [m], ``focallength_px`` and ``fov_deg``, squeezed as the official
        output. The module is cast to :meth:`inference_dtype` for its device on first use (half
        on CUDA); depth and focal arithmetic after the network is float32.
        """
        if x.ndim == 3:
            x = x.unsqueeze(0)
        dtype = self.inference_dtype(x.device)
        if self.encoder.patch_encoder.pos_embed.dtype != dtype:
            self.to(dtype)
        size = tuple(x.shape[-2:])
        x = x.to(dtype)
        if size != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        canonical, fov_deg = self.predict(x)
        return metric_depth(canonical, fov_deg, size, f_px)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(data)
        image = data["image"]
        batch = image.shape[0]
        out = self.infer(image * 2 - 1, data.get("focal_px"))
        return {
            "depth": out["depth"].reshape(batch, *image.shape[-2:]),
            "focal_px": out["focallength_px"].reshape(batch),
            "fov_deg": out["fov_deg"].reshape(batch),
        }


def metric_depth(canonical: torch.Tensor, fov_deg: torch.Tensor, size: tuple[int, int],
                 f_px: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Network outputs -> metric depth of an image of ``size`` = (H, W) pixels.

    canonical (B, 1, h, w) inverse depth for a focal length equal to the image width, fov_deg
    (B, 1, 1, 1). ``f_px`` (scalar or (B,)) replaces the focal from the FOV,
    ``W / 2 / tan(fov / 2)``. Depth = 1 / clamp(canonical * W / f_px, 1e-4, 1e4) after a
    bilinear resize of the inverse depth to ``size``. Outputs are float32 and squeezed:
    ``depth`` (H, W) or (B, H, W), ``focallength_px`` and ``fov_deg`` scalars or (B,).
    """
    width = size[1]
    if f_px is None:
        f_px = 0.5 * width / torch.tan(0.5 * torch.deg2rad(fov_deg.float()))
    else:
        f_px = torch.as_tensor(f_px, dtype=torch.float32, device=canonical.device).reshape(-1, 1, 1, 1)
    inverse_depth = canonical.float() * (width / f_px)
    if tuple(inverse_depth.shape[-2:]) != tuple(size):
        inverse_depth = F.interpolate(inverse_depth, size=size, mode="bilinear", align_corners=False)
    depth = 1.0 / inverse_depth.clamp(min=1e-4, max=1e4)
    return {"depth": depth.squeeze(), "focallength_px": f_px.squeeze(), "fov_deg": fov_deg.float().squeeze()}
