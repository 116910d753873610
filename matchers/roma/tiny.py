"""Tiny RoMa v1 (Parskatt/RoMa ``romatch/models/tiny.py``): a small dense matcher on XFeat features.

A global correlation volume of XFeat's stride-8 features gives a coarse warp (soft-argmax over
B's positions), which two small conv nets refine at stride 8 and stride 4 together with a
certainty. Weights: ``tiny_roma_v1_outdoor.pth`` (flat; XFeat trunk under ``xfeat.0.*``).

As in the official inference path (``exact_softmax=False``) the soft-argmax uses every 4th row
and column of B's positions plus one extra class for the best match; note that the official code
concatenates the best match's *index* (not its score) as that class's logit, which this module
reproduces for fidelity. The balanced sampler's KDE uses every 8th draw on CPU, as the official one.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights as weights_registry
from ..backbones.xfeat import BasicLayer, XFeatBackbone
from ..base import BaseModel, ConfigError
from .ops import mutual_nearest_matches, normalized_to_pixels, pixels_to_normalized, sample_matches, sample_warp

weights_registry.register_checkpoint(weights_registry.Checkpoint(
    name="tiny_roma_v1_outdoor",
    url="https://github.com/Parskatt/storage/releases/download/roma/tiny_roma_v1_outdoor.pth",
    filename="tiny_roma_v1_outdoor.pth", license="MIT (Parskatt/RoMa); XFeat trunk: Apache-2.0 (verlab)",
    notes="Flat state dict including the XFeat trunk under xfeat.0.*"))


def xy_grid(h: int, w: int, margin_h: float, margin_w: float, count_h: int, count_w: int,
            device: torch.device) -> torch.Tensor:
    """(count_h * count_w, 2) row-major (x, y) positions ``linspace(-1 + m, 1 - m, count)`` per axis."""
    ys = torch.linspace(-1 + margin_h, 1 - margin_h, count_h, device=device)
    xs = torch.linspace(-1 + margin_w, 1 - margin_w, count_w, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2)


class TinyRoMa(BaseModel):
    """Tiny RoMa v1 outdoor. ``forward``: ``{"image0", "image1": (1, 3, H, W) in [0, 1]}`` ->
    ``{"keypoints0", "keypoints1": (M, 2) pixels (hloc convention), "scores": (M,)}``."""

    kind = "dense_matcher"
    required_inputs = ("image0", "image1")
    default_conf: ClassVar[dict[str, Any]] = {
        "sample_mode": "threshold_balanced",
        "sample_thresh": 0.05,
        "max_matches": 5000,
        "exact_softmax": False,
        "seed": 0,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        if self.conf["sample_mode"] not in ("threshold_balanced", "threshold", "balanced", "plain"):
            raise ConfigError(f"TinyRoMa.sample_mode: unknown mode {self.conf['sample_mode']!r}")
        self.xfeat = nn.ModuleList([XFeatBackbone()])
        self.coarse_matcher = nn.Sequential(BasicLayer(64 + 64 + 2, 256), BasicLayer(256, 256),
                                            BasicLayer(256, 256), BasicLayer(256, 256), nn.Conv2d(256, 3, 1))
        self.fine_matcher = nn.Sequential(BasicLayer(24 + 24 + 2, 64), BasicLayer(64, 64), BasicLayer(64, 64),
                                          BasicLayer(64, 64), nn.Conv2d(64, 3, 1))

    def soft_argmax(self, corr: torch.Tensor) -> torch.Tensor:
        """corr (B, H1, W1, H0, W0) -> expected B position per A pixel, (B, 2, H0, W0)."""
        b, h1, w1, h0, w0 = corr.shape
        grid = xy_grid(h1, w1, 1 / h1, 1 / w1, h1, w1, corr.device).to(corr.dtype)
        if self.conf["exact_softmax"]:
            return torch.einsum("bchw,cd->bdhw", corr.reshape(b, h1 * w1, h0, w0).softmax(dim=1), grid)
        down = 4
        grid_low = xy_grid(h1, w1, down / h1, down / w1, h1 // down, w1 // down, corr.device).to(corr.dtype)
        best = corr.reshape(b, h1 * w1, h0, w0).argmax(dim=1)
        logits = torch.cat((corr[:, ::down, ::down].reshape(b, -1, h0, w0), best[:, None].to(corr.dtype)), dim=1)
        p = logits.softmax(dim=1)
        return torch.einsum("bchw,cd->bdhw", p[:, :-1], grid_low) + p[:, -1:] * grid[best].permute(0, 3, 1, 2)

    def corresps(self, im0: torch.Tensor, im1: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
        """The official ``forward``: {8: coarse, 4: fine} ``{"flow": (B,2,h,w), "certainty": (B,1,h,w)}``."""
        im0, im1 = (F.interpolate(im, ((im.shape[-2] // 32) * 32, (im.shape[-1] // 32) * 32), mode="bilinear",
                                  align_corners=False) for im in (im0, im1))
        h1, w1 = im1.shape[-2:]
        to_normalized = im0.new_tensor((2 / w1, 2 / h1, 1))[None, :, None, None]
        xfeat = self.xfeat[0]
        if im0.shape[-2:] == im1.shape[-2:]:
            fine, coarse = xfeat(torch.cat((im0, im1)))
            (fine0, fine1), (coarse0, coarse1) = fine.chunk(2), coarse.chunk(2)
        else:
            (fine0, coarse0), (fine1, coarse1) = xfeat(im0), xfeat(im1)
        b, c, ch0, cw0 = coarse0.shape
        ch1, cw1 = coarse1.shape[-2:]
        corr = torch.einsum("bci,bcj->bji", coarse0.flatten(2), coarse1.flatten(2)).reshape(b, ch1, cw1, ch0, cw0)
        warp = self.soft_argmax(corr / math.sqrt(c))
        matches = torch.cat((warp, torch.zeros_like(warp[:, -1:])), dim=1)
        coarse1_warped = F.grid_sample(coarse1, matches.permute(0, 2, 3, 1)[..., :2], mode="bilinear",
                                       align_corners=False)
        matches = matches + self.coarse_matcher(torch.cat((coarse0, coarse1_warped, warp), dim=1)) * to_normalized
        out = {8: {"flow": matches[:, :2], "certainty": matches[:, 2:]}}
        up = F.interpolate(matches, size=fine0.shape[-2:], mode="bilinear", align_corners=False)
        fine1_warped = F.grid_sample(fine1, up.permute(0, 2, 3, 1)[..., :2], mode="bilinear", align_corners=False)
        fine_matches = up + self.fine_matcher(torch.cat((fine0, fine1_warped, up[:, :2]), dim=1)) * to_normalized
        out[4] = {"flow": fine_matches[:, :2], "certainty": fine_matches[:, 2:]}
        return out

    @torch.inference_mode()
    def match(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image0 (B,3,H0,W0), image1 (B,3,H1,W1) in [0, 1] -> warp (B,H0,W0,4) A->B, certainty (B,H0,W0)."""
        self.train(False)
        b, _, h0, w0 = image0.shape
        out = self.corresps(image0, image1)[4]
        flow = F.interpolate(out["flow"], size=(h0, w0), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        grid = xy_grid(h0, w0, 1 / h0, 1 / w0, h0, w0, flow.device).reshape(1, h0, w0, 2).expand(b, h0, w0, 2)
        certainty = F.interpolate(out["certainty"], size=(h0, w0), mode="bilinear", align_corners=False)
        return torch.cat((grid, flow), dim=-1), certainty[:, 0].sigmoid()

    def sample(self, warp: torch.Tensor, certainty: torch.Tensor, num: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Threshold-balanced sampling as RoMa, KDE over every 8th draw on CPU (official)."""
        mode = self.conf["sample_mode"]
        generator = torch.Generator(device=certainty.device).manual_seed(self.conf["seed"])
        return sample_matches(warp, certainty, num or self.conf["max_matches"],
                              self.conf["sample_thresh"] if "threshold" in mode else None, "balanced" in mode,
                              generator, kde_stride=1 if certainty.device.type == "cuda" else 8)

    def pair(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair's images (1, 3, H, W) as float tensors on the model's device."""
        self.check_inputs(data)
        image0, image1 = data["image0"].to(self.device).float(), data["image1"].to(self.device).float()
        if image0.shape[0] != 1 or image1.shape[0] != 1:
            raise ValueError("TinyRoMa matches one pair at a time (batch size 1)")
        return image0, image1

    def match_keypoints(self, data: dict[str, torch.Tensor], max_distance: float = 0.005, min_certainty: float = 0.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Given keypoints matched through the warp, as :meth:`matchers.roma.RoMa.match_keypoints`."""
        image0, image1 = self.pair(data)
        warp, certainty = self.match(image0, image1)
        points = [pixels_to_normalized(data[key].reshape(-1, 2).to(warp), *image.shape[-2:])
                  for key, image in (("keypoints0", image0), ("keypoints1", image1))]
        predicted, score = sample_warp(warp[0, ..., 2:], certainty[0], points[0])
        return mutual_nearest_matches(predicted, score, points[1], max_distance, min_certainty)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image0, image1 = self.pair(data)
        warp, certainty = self.match(image0, image1)
        matches, scores = self.sample(warp[0], certainty[0])
        return {"keypoints0": normalized_to_pixels(matches[:, :2], *image0.shape[-2:]),
                "keypoints1": normalized_to_pixels(matches[:, 2:], *image1.shape[-2:]), "scores": scores}
