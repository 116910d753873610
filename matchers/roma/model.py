"""RoMa: dense feature matching (Edstedt et al., CVPR 2024), official architecture and behaviour.

Reference: Parskatt/RoMa (romatch 0.1.2, commit a1494f8) ``romatch/models/matcher.py`` and
``model_zoo/roma_models.py``. Coarse features come from a frozen DINOv2 ViT-L/14 (stride 14,
registered as stride "16"), fine features from VGG19-BN (strides 1-8). A Gaussian-process match
module and a transformer decoder classify every coarse pixel of A into a 64x64 anchor grid of
B; convolutional refiners then correct the warp scale by scale, in a low-resolution pass
(560 x 560) and an upsampling pass (864 x 864) that reuses the first pass's warp.

:class:`DenseMatcher` is the family-independent part (two passes, symmetric matching,
certainty attenuation, sampling, pixel conversion) that DKM and the GIM variants share;
:class:`RoMa` builds the official modules.

Deviations from the official code (documented, numerically negligible or behavioural only):
- images enter as tensors in [0, 1] and are resized with ``F.interpolate`` (bicubic with
  antialiasing, clamped to [0, 1], for RoMa; the official code resizes PIL images bicubically);
- on CUDA, mixed precision uses ``torch.autocast`` for VGG, DINOv2, the match decoder and the
  refiners (the official code casts DINOv2's weights to float16); on CPU everything is float32;
- the match-space KDE of the balanced sampler runs in float32 in row blocks (official: float16,
  all pairs at once), and ``sample`` returns the sampled matches' real certainties (official RoMa
  returns the thresholded ones, mostly 1.0; GIM returns the real ones);
- sampling draws from a generator seeded by ``conf["seed"]``.
"""
from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights as weights_registry
from ..backbones import dinov2 as _dinov2  # also registers the DINOV2_CHECKPOINT entry
from ..backbones.vgg import VGG19BN
from ..base import BaseModel, ConfigError
from .layers import GP, ConvRefiner, Decoder, TransformerDecoder, autocast
from .ops import (mutual_nearest_matches, normalized_to_pixels, pixel_grid, pixels_to_normalized, sample_matches,
                  sample_warp)

DINOV2_CHECKPOINT = "dinov2_vitl14_pretrain"

weights_registry.register_checkpoint(weights_registry.Checkpoint(
    name="roma_outdoor", url="https://github.com/Parskatt/storage/releases/download/roma/roma_outdoor.pth",
    filename="roma_outdoor.pth", license="MIT (Parskatt/RoMa)",
    notes="Flat state dict of the matcher without DINOv2; DINOv2 ViT-L/14 comes from dinov2_vitl14_pretrain.pth."))
weights_registry.register_checkpoint(weights_registry.Checkpoint(
    name="roma_indoor", url="https://github.com/Parskatt/storage/releases/download/roma/roma_indoor.pth",
    filename="roma_indoor.pth", license="MIT (Parskatt/RoMa)",
    notes="Same keys as roma_outdoor.pth; trained on ScanNet."))


def amp_dtype(enabled: bool) -> torch.dtype | None:
    """float16 autocast on CUDA when ``enabled`` (RoMa's default), else full precision."""
    return torch.float16 if enabled else None


class CNNandDinov2(nn.Module):
    """RoMa's encoder: VGG19-BN features at strides 1-8 plus frozen DINOv2 ViT-L/14 patch tokens.

    The ViT is held outside the module tree (as in the official code), so its 304 M weights are
    not part of RoMa's state dict: they load from their own checkpoint. ``to()``/``cuda()`` and
    ``train()`` still reach it.
    """

    def __init__(self, amp: bool = True) -> None:
        super().__init__()
        self.cnn = VGG19BN(num_layers=40)
        # The hub factory's defaults are RoMa's ViT (img 518, patch 14, LayerScale 1.0, MLP FFN, no
        # block chunks); its weights come from their own file, never fetched at construction.
        self._dinov2 = [_dinov2.dinov2_vitl14().eval()]
        self.amp_dtype = amp_dtype(amp)

    @property
    def dinov2(self) -> nn.Module:
        return self._dinov2[0]

    def _apply(self, fn: Any, recurse: bool = True) -> "CNNandDinov2":
        self.dinov2._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "CNNandDinov2":
        super().train(mode)
        self.dinov2.eval()  # frozen
        return self

    def forward(self, x: torch.Tensor, upsample: bool = False) -> dict[int, torch.Tensor]:
        """x (B, 3, H, W) normalised, H and W multiples of 14 when not ``upsample``.

        Returns {1: (B,64,H,W), 2: (B,128,...), 4: (B,256,...), 8: (B,512,...)} and, in the
        coarse pass, 16: (B, 1024, H/14, W/14).
        """
        b, _, h, w = x.shape
        with autocast(x.device, self.amp_dtype):
            pyramid = self.cnn(x)
        if not upsample:
            with torch.no_grad(), autocast(x.device, self.amp_dtype):
                tokens = self.dinov2.forward_features(x)["x_norm_patchtokens"]
            pyramid[16] = tokens.permute(0, 2, 1).reshape(b, -1, h // 14, w // 14)
        return pyramid


def roma_decoder(gp_dim: int = 512, feat_dims: dict[str, int] | None = None, decoder_depth: int = 5,
                 decoder_heads: int = 8, cls_res: int = 64, refiners: dict[str, tuple[int, int | None]] | None = None,
                 encoder_dims: dict[str, int] | None = None, hidden_blocks: int = 8, kernel_size: int = 5,
                 amp: bool = True) -> Decoder:
    """RoMa's decoder; the defaults are the official sizes (``roma_model``).

    ``feat_dims``: channels after each scale's ``proj`` (conv 1x1 + BN) from ``encoder_dims``;
    ``refiners``: per scale (displacement embedding dim, local-correlation radius or None). A
    refiner's input (= hidden) width is 2 * feat_dim + emb_dim + (2r+1)^2.
    """
    encoder_dims = encoder_dims or {"16": 1024, "8": 512, "4": 256, "2": 128, "1": 64}
    feat_dims = feat_dims or {"16": 512, "8": 512, "4": 256, "2": 64, "1": 9}
    refiners = refiners or {"16": (128, 7), "8": (64, 3), "4": (32, 2), "2": (16, None), "1": (6, None)}
    dtype = amp_dtype(amp)
    decoder_dim = gp_dim + feat_dims["16"]
    conv_refiner = nn.ModuleDict()
    for scale, (emb_dim, radius) in refiners.items():
        width = 2 * feat_dims[scale] + emb_dim + ((2 * radius + 1) ** 2 if radius else 0)
        conv_refiner[scale] = ConvRefiner(width, width, 3, kernel_size=kernel_size, hidden_blocks=hidden_blocks,
                                          displacement_emb_dim=emb_dim, local_corr_radius=radius,
                                          bn_momentum=0.01, amp_dtype=dtype)
    proj = nn.ModuleDict({scale: nn.Sequential(nn.Conv2d(encoder_dims[scale], dim, 1, 1), nn.BatchNorm2d(dim))
                          for scale, dim in feat_dims.items()})
    return Decoder(TransformerDecoder(decoder_dim, decoder_depth, decoder_heads, cls_res, dtype),
                   nn.ModuleDict({"16": GP(gp_dim, temperature=0.2, sigma_noise=0.1)}), proj, conv_refiner,
                   scales=["16", "8", "4", "2", "1"], scale_displacement_emb=True)


class DenseMatcher(BaseModel):
    """Two-pass symmetric dense matcher (RoMa's ``RegressionMatcher`` behaviour).

    Subclasses set ``self.encoder`` (``encoder(x, upsample) -> {stride: features}``) and
    ``self.decoder`` (:class:`Decoder`) and ``checkpoint_layout`` (the checkpoint entry whose
    key remapping applies to a user-supplied file).

    ``forward`` (the pipeline's dense-matcher interface): ``{"image0", "image1": (1, 3, H, W) in
    [0, 1]}`` -> ``{"keypoints0", "keypoints1": (M, 2) pixels of each input image (hloc
    convention: centre of the top-left pixel at (0, 0)), "scores": (M,) certainty}``.
    """

    kind = "dense_matcher"
    required_inputs = ("image0", "image1")
    checkpoint_layout: ClassVar[str | None] = None
    default_conf: ClassVar[dict[str, Any]] = {
        "coarse_res": (560, 560),  # (H, W) of the first pass
        "upsample_res": (864, 864),  # (H, W) of the second pass
        "upsample": True,
        "symmetric": True,
        "attenuate_cert": True,
        "scale_reference": 560,  # training resolution: scale_factor = sqrt(H * W) / scale_reference
        "interpolation": "bicubic",
        "antialias": True,
        "normalize": True,  # ImageNet mean/std
        "mask_black": False,  # GIM: zero the certainty of (near-)black input pixels
        "pad_to_aspect": False,  # GIM: pad inputs (centred, zeros) to the coarse aspect ratio
        "sample_mode": "threshold_balanced",
        "sample_thresh": 0.05,
        "max_matches": 10000,
        "seed": 0,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        for key in ("coarse_res", "upsample_res"):
            value = tuple(int(v) for v in self.conf[key])
            if len(value) != 2:
                raise ConfigError(f"{type(self).__name__}.{key}: expected (height, width), got {self.conf[key]!r}")
            self.conf[key] = value
        if self.conf["sample_mode"] not in ("threshold_balanced", "threshold", "balanced", "plain"):
            raise ConfigError(f"{type(self).__name__}.sample_mode: unknown mode {self.conf['sample_mode']!r}")

    # ---- the network passes -------------------------------------------------------------------
    def pass_once(self, im_A: torch.Tensor, im_B: torch.Tensor, upsample: bool, scale_factor: float,
                  flow: torch.Tensor | None = None, certainty: torch.Tensor | None = None
                  ) -> dict[int, dict[str, torch.Tensor]]:
        """Encode both images in one batch and decode A->B (and B->A when symmetric)."""
        pyramid = self.encoder(torch.cat((im_A, im_B)), upsample=upsample)
        if self.conf["symmetric"]:
            f1 = pyramid
            f2 = {s: torch.cat(f.chunk(2)[::-1]) for s, f in pyramid.items()}
        else:
            f1 = {s: f.chunk(2)[0] for s, f in pyramid.items()}
            f2 = {s: f.chunk(2)[1] for s, f in pyramid.items()}
        return self.decoder(f1, f2, upsample=upsample, flow=flow, certainty=certainty, scale_factor=scale_factor)

    @torch.inference_mode()
    def match_tensors(self, im_A: torch.Tensor, im_B: torch.Tensor, im_A_high_res: torch.Tensor | None = None,
                      im_B_high_res: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The official ``match`` on already preprocessed tensors.

        im_A, im_B (B, 3, h, w) at the coarse resolution; im_*_high_res (B, 3, H, W) at the
        upsampling resolution (required when ``conf["upsample"]``). Returns ``warp`` (B, H, 2W, 4)
        (symmetric: left half ``[xA, yA, xB, yB]`` for every A pixel, right half the same for
        every B pixel) or (B, H, W, 4), and ``certainty`` (B, H, 2W) / (B, H, W) in [0, 1].
        """
        self.train(False)
        h, w = self.conf["coarse_res"]
        reference = self.conf["scale_reference"]
        corresps = self.pass_once(im_A, im_B, upsample=False, scale_factor=math.sqrt(h * w) / reference)
        coarse_certainty = corresps[16]["certainty"]
        if self.conf["upsample"]:
            if im_A_high_res is None or im_B_high_res is None:
                raise ValueError("upsample=True needs the high-resolution images")
            up_h, up_w = self.conf["upsample_res"]
            corresps = self.pass_once(im_A_high_res, im_B_high_res, upsample=True,
                                      scale_factor=math.sqrt(up_h * up_w) / reference,
                                      flow=corresps[1]["flow"], certainty=corresps[1]["certainty"])
        flow, logits = corresps[1]["flow"], corresps[1]["certainty"]
        hs, ws = flow.shape[-2:]
        if self.conf["attenuate_cert"]:
            low = F.interpolate(coarse_certainty, size=(hs, ws), mode="bilinear", align_corners=False)
            logits = logits - 0.5 * low * (low < 0)
        certainty = logits.sigmoid()
        flow = flow.permute(0, 2, 3, 1)
        certainty = certainty.masked_fill((flow.abs() > 1).any(dim=-1)[:, None], 0)
        flow = flow.clamp(-1, 1)
        b = im_A.shape[0]
        coords = pixel_grid(b, hs, ws, flow.device, flow.dtype).permute(0, 2, 3, 1)
        if self.conf["symmetric"]:
            a_to_b, b_to_a = flow.chunk(2)
            warp = torch.cat((torch.cat((coords, a_to_b), dim=-1), torch.cat((b_to_a, coords), dim=-1)), dim=2)
            certainty = torch.cat(certainty.chunk(2), dim=3)
        else:
            warp = torch.cat((coords, flow), dim=-1)
        return warp, certainty[:, 0]

    # ---- images in, warp out --------------------------------------------------------------------
    def preprocess(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Resize (B, 3, H, W) in [0, 1] to ``size`` and normalise as the model expects."""
        mode = self.conf["interpolation"]
        resized = F.interpolate(image, size=size, mode=mode, align_corners=False,
                                antialias=self.conf["antialias"] and mode in ("bilinear", "bicubic"))
        resized = resized.clamp(0, 1)
        if self.conf["normalize"]:
            resized = _dinov2.imagenet_normalize(resized)
        return resized

    def match(self, image0: torch.Tensor, image1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense warp and certainty between two batches of images (B, 3, H_i, W_i) in [0, 1].

        Each image is resized to the coarse (and upsampling) resolution, so the two may differ in
        size. Returns ``(warp, certainty)`` as :meth:`match_tensors` does, in normalised
        coordinates of each image ([-1, 1], ``align_corners=False``).
        """
        for name, image in (("image0", image0), ("image1", image1)):
            if image.ndim != 4 or image.shape[1] != 3:
                raise ValueError(f"{type(self).__name__}.match: {name} must be (B, 3, H, W), got {tuple(image.shape)}")
        if image0.shape[0] != image1.shape[0]:
            raise ValueError("image0 and image1 must have the same batch size")
        image0, image1 = image0.to(self.device).float(), image1.to(self.device).float()
        coarse = [self.preprocess(im, self.conf["coarse_res"]) for im in (image0, image1)]
        fine = [self.preprocess(im, self.conf["upsample_res"]) for im in (image0, image1)] \
            if self.conf["upsample"] else [None, None]
        warp, certainty = self.match_tensors(coarse[0], coarse[1], fine[0], fine[1])
        if self.conf["mask_black"]:
            certainty = certainty * ~self.black_mask(image0, image1, certainty.shape[-2:])
        return warp, certainty

    def black_mask(self, image0: torch.Tensor, image1: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """GIM: pixels whose three channels are all below 1/32 (padding, borders) cannot match.

        Returns a bool mask (B, H, 2W) (symmetric) or (B, H, W) over the certainty map.
        """
        h = size[0]
        w = size[1] // 2 if self.conf["symmetric"] else size[1]
        masks = [F.interpolate((im < 0.03125).all(dim=1, keepdim=True).float(), size=(h, w), mode="nearest")[:, 0] > 0
                 for im in (image0, image1)]
        return torch.cat(masks, dim=-1) if self.conf["symmetric"] else masks[0]

    # ---- sparse matches ----------------------------------------------------------------------------
    def sample(self, warp: torch.Tensor, certainty: torch.Tensor, num: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw up to ``num`` matches (M, 4) and their certainties (M,) from a dense warp.

        ``threshold_balanced`` (default): certainties above ``sample_thresh`` count as 1, then the
        draws are thinned by a match-space KDE; see :func:`matchers.roma.ops.sample_matches`.
        """
        mode = self.conf["sample_mode"]
        generator = torch.Generator(device=certainty.device).manual_seed(self.conf["seed"])
        return sample_matches(warp, certainty, num or self.conf["max_matches"],
                              self.conf["sample_thresh"] if "threshold" in mode else None,
                              "balanced" in mode, generator)

    def padding(self, image: torch.Tensor) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding that brings ``image`` to the coarse aspect ratio."""
        height, width = image.shape[-2:]
        aspect = self.conf["coarse_res"][1] / self.conf["coarse_res"][0]
        pad_w = max(width, int(height * aspect)) - width
        pad_h = max(height, int(width / aspect)) - height
        return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2

    def padded_pair(self, data: dict[str, torch.Tensor]
                    ) -> tuple[list[torch.Tensor], list[tuple[int, int, int, int]]]:
        """The pair's images (1, 3, H, W), zero-padded to the coarse aspect when ``pad_to_aspect``
        (GIM), and each image's (left, right, top, bottom) padding."""
        self.check_inputs(data)
        images = [data["image0"], data["image1"]]
        if images[0].shape[0] != 1 or images[1].shape[0] != 1:
            raise ValueError(f"{type(self).__name__} matches one pair at a time (batch size 1)")
        pads = [self.padding(im) if self.conf["pad_to_aspect"] else (0, 0, 0, 0) for im in images]
        return [F.pad(im, pad) for im, pad in zip(images, pads)], pads

    def match_keypoints(self, data: dict[str, torch.Tensor], max_distance: float = 0.005, min_certainty: float = 0.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Match given keypoints through the dense warp (RoMa's ``match_keypoints``).

        data: ``image0``/``image1`` (1, 3, H, W) in [0, 1], ``keypoints0`` (N, 2) / ``keypoints1``
        (M, 2) in those images' pixels (hloc convention). Each keypoint of image 0 is moved by the
        A->B warp and paired with its mutual nearest keypoint of image 1 (see
        :func:`matchers.roma.ops.mutual_nearest_matches`; ``max_distance`` in normalised units).
        Returns ``matches0`` (N,) long (-1: unmatched) and ``matching_scores0`` (N,) certainties.
        """
        padded, pads = self.padded_pair(data)
        warp, certainty = self.match(padded[0], padded[1])
        width = warp.shape[2] // 2 if self.conf["symmetric"] else warp.shape[2]  # A->B half
        points = [pixels_to_normalized(data[key].reshape(-1, 2).to(warp) + warp.new_tensor((pad[0], pad[2])),
                                       *image.shape[-2:])
                  for key, pad, image in zip(("keypoints0", "keypoints1"), pads, padded)]
        predicted, score = sample_warp(warp[0, :, :width, 2:], certainty[0, :, :width], points[0])
        return mutual_nearest_matches(predicted, score, points[1], max_distance, min_certainty)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        padded, pads = self.padded_pair(data)
        images = [data["image0"], data["image1"]]
        warp, certainty = self.match(padded[0], padded[1])
        matches, scores = self.sample(warp[0], certainty[0])
        keep = torch.ones_like(scores, dtype=torch.bool)
        keypoints = []
        for index, (image, pad, im_padded) in enumerate(zip(images, pads, padded)):
            h_p, w_p = im_padded.shape[-2:]
            pixels = normalized_to_pixels(matches[:, 2 * index:2 * index + 2], h_p, w_p)
            pixels = pixels - pixels.new_tensor((pad[0], pad[2]))
            h, w = image.shape[-2:]
            keep &= (pixels[:, 0] >= -0.5) & (pixels[:, 0] < w - 0.5) & (pixels[:, 1] >= -0.5) & (pixels[:, 1] < h - 0.5)
            keypoints.append(pixels)
        return {"keypoints0": keypoints[0][keep], "keypoints1": keypoints[1][keep], "scores": scores[keep]}


class RoMa(DenseMatcher):
    """RoMa with the official architecture (``roma_outdoor`` / ``roma_indoor``).

    ``encoder``/``decoder`` default to the official modules; passing others (same interfaces)
    builds RoMa at other sizes, e.g. the reduced-size fixture model.
    """

    checkpoint_layout: ClassVar[str | None] = "roma_outdoor"
    default_conf: ClassVar[dict[str, Any]] = {**DenseMatcher.default_conf, "dinov2_weights": DINOV2_CHECKPOINT,
                                              "amp": True}  # float16 autocast on CUDA (DKM has none)

    def __init__(self, encoder: nn.Module | None = None, decoder: nn.Module | None = None, **conf: Any) -> None:
        super().__init__(**conf)
        if encoder is None:
            for key in ("coarse_res",):
                if any(v % 14 for v in self.conf[key]):
                    raise ConfigError(f"RoMa.{key} must be multiples of 14 (DINOv2 patch size), got {self.conf[key]}")
        self.encoder = encoder if encoder is not None else CNNandDinov2(amp=self.conf["amp"])
        self.decoder = decoder if decoder is not None else roma_decoder(amp=self.conf["amp"])


def load_weights(model: DenseMatcher, weights: str | os.PathLike) -> None:
    """Load an official checkpoint strictly; for RoMa also DINOv2 ViT-L/14 from its own file.

    The DINOv2 file is ``conf["dinov2_weights"]``: a path, or the registered name
    ``dinov2_vitl14_pretrain`` found in ``$RECON_WEIGHTS`` / the torch hub cache by its official
    file name ``dinov2_vitl14_pretrain.pth`` (downloaded when missing and online).
    """
    state = weights_registry.load_state_dict(weights, entry=model.checkpoint_layout)
    model.load_state_dict(state, strict=True)
    if isinstance(getattr(model, "encoder", None), CNNandDinov2):
        dino = model.conf["dinov2_weights"]
        model.encoder.dinov2.load_state_dict(
            weights_registry.load_state_dict(dino, entry=DINOV2_CHECKPOINT), strict=True)
