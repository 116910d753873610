"""DINOv2 patch tokens as a token source of the ASMK pair strategies (``tokens: dinov2``).

Each image is read (EXIF orientation applied), resized so that its long side is ``size`` pixels
and both sides are multiples of the patch size (14), normalised with the ImageNet mean and std
DINOv2 was trained with, and run once through the ViT; its tokens are the final-LayerNorm patch
tokens ``x_norm_patchtokens`` (T, D) (``T = H/14 * W/14``, D = 384 / 768 / 1024), without the
class and register tokens. They go into the run's ``dinov2-tokens.h5`` (a
:class:`~recon.graph.tokens.TokenCache`, ``/<name>/tokens``), each entry keyed by model,
checkpoint, input size and the image file's bytes, so a rerun encodes nothing and another model,
size or an edited image is encoded again. This is the same design as MASt3R's encoder tokens
(:func:`recon.match.mast3r.encoder_token_cache`); ASMK then whitens them, keeps the
``num_tokens`` (300 by default) of largest whitened norm and compares the images.

Model: ``dinov2_model`` is one of :data:`DINOV2_MODELS` (the official hub models ViT-S/B/L/14,
each with or without 4 register tokens). The default is ViT-B/14: its 768-dim tokens keep the
whitening and codebook k-means cheaper than ViT-L/14's 1024 dims, it costs about a third of
ViT-L/14's compute per image (87M vs 304M parameters), and its checkpoint is the one OmniGlue
already loads. Retrieval quality with real DINOv2 weights has NOT been measured in recon (no
official DINOv2 checkpoint is available where this was written): no claim is made that DINOv2
tokens give better pairs than local features or MASt3R's encoder tokens, nor about which model,
input size or token count retrieves best; the 300 tokens are MASt3R's count, not a tuned value.

Weights: ``encoder_weights`` empty (or ``official``) loads the official checkpoint of
``dinov2_model`` through :func:`matchers.load` (``$RECON_WEIGHTS``, the torch hub cache, or a
download; offline, the registry's error names the URL and the expected path). A path or a
registered checkpoint name is read as a state dict in the official layout whose tensor shapes
define the ViT's sizes (:func:`~matchers.backbones.dinov2.architecture_from_state_dict`):
``dinov2_model`` then only fixes the family - with or without registers, which decides how
position embeddings are interpolated - and must agree with the file. This is what lets a
fine-tuned or a tiny test checkpoint run without a config option per size.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import matchers
from matchers.backbones.dinov2 import DinoVisionTransformer, architecture_from_state_dict, imagenet_normalize
from matchers.base import ConfigError
from matchers.weights import load_state_dict
from ..fingerprint import content_digest, fingerprint, weights_identity
from ..io.images import read_image
from .tokens import TokenCache

TOKENS_FILE = "dinov2-tokens.h5"
#: ``dinov2_model`` values -> registered model names (``matchers/registry.py``)
DINOV2_MODELS: dict[str, str] = {
    "vits14": "dinov2_vits14", "vitb14": "dinov2_vitb14", "vitl14": "dinov2_vitl14",
    "vits14_reg4": "dinov2_vits14_reg", "vitb14_reg4": "dinov2_vitb14_reg", "vitl14_reg4": "dinov2_vitl14_reg",
}
DEFAULT_MODEL = "vitb14"
#: long side of the input when ``encoder_size`` is 0: the hub models' native 518 px (37 x 14), the
#: resolution their position embeddings were trained at
DEFAULT_SIZE = 518


def registered_name(model: str) -> str:
    """The registered model name of a ``dinov2_model`` value; a ConfigError names the choices."""
    if model not in DINOV2_MODELS:
        raise ConfigError(f"pairs.dinov2_model: unknown DINOv2 model {model!r} (known: {', '.join(DINOV2_MODELS)})")
    return DINOV2_MODELS[model]


def load_dinov2(model: str, weights: str, device: torch.device | str) -> DinoVisionTransformer:
    """The DINOv2 ViT of ``dinov2_model`` with ``encoder_weights`` (see the module doc), in eval mode."""
    name = registered_name(model)
    if weights in ("", "official"):
        return matchers.load(name, "official", device)
    state = load_state_dict(weights)  # read once: its shapes set the architecture, then it is loaded
    architecture = architecture_from_state_dict(state)
    registers = 4 if model.endswith("_reg4") else 0
    if architecture["num_register_tokens"] != registers:
        raise ValueError(f"{weights} has {architecture['num_register_tokens']} register tokens but dinov2_model "
                         f"{model!r} has {registers}: choose the {'_reg4 ' if not registers else 'plain '}variant")
    network = matchers.load(name, None, device, **architecture)
    network.load_state_dict(state, strict=True)
    return network


def input_size(width: int, height: int, long_side: int, patch_size: int) -> tuple[int, int]:
    """(width, height) of the network input: the aspect-preserving size whose long side is
    ``long_side``, each side rounded to the nearest multiple of ``patch_size`` (at least one patch).
    The aspect ratio changes by at most half a patch per side; nothing is cropped."""
    scale = long_side / max(width, height)
    return tuple(max(patch_size, round(side * scale / patch_size) * patch_size) for side in (width, height))


def prepare_image(path: str | os.PathLike, long_side: int, patch_size: int) -> torch.Tensor:
    """An image file as DINOv2's input: (1, 3, H, W) float32, ImageNet-normalised RGB, H and W
    multiples of ``patch_size`` (:func:`input_size`; PIL bicubic, antialiased when shrinking)."""
    image = read_image(path)
    size = input_size(image.shape[1], image.shape[0], long_side, patch_size)
    resized = np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.Resampling.BICUBIC))
    rgb = torch.from_numpy(resized.copy()).permute(2, 0, 1).float().div(255)
    return imagenet_normalize(rgb[None])


def dinov2_key(model: str, weights: str, size: int, digest: str) -> str:
    """What one image's cached tokens were made from: model, checkpoint, input size, image bytes."""
    return fingerprint("dinov2-patch-tokens", model, weights_identity(weights or "official"), int(size), digest)


def dinov2_token_cache(image_dir: Path, output_dir: Path, model: str, weights: str, size: int,
                       device: torch.device | str) -> TokenCache:
    """The run's DINOv2 patch-token cache (``dinov2-tokens.h5``), filled on demand.

    ``size`` is the input's long side (0: :data:`DEFAULT_SIZE`). Bad options fail here, before any
    image is read; the network is loaded only when some image is missing from the cache, and each
    missing image is encoded once (one forward pass, tokens (T, D) float32 stored on the CPU).
    """
    registered_name(model)
    if size < 0:
        raise ConfigError(f"pairs.encoder_size must be >= 0 (0: {DEFAULT_SIZE}), got {size}")
    size = size or DEFAULT_SIZE
    network: DinoVisionTransformer | None = None

    @functools.cache
    def key(name: str) -> str:
        return dinov2_key(model, weights, size, content_digest(image_dir / name))

    @torch.no_grad()
    def encode(name: str) -> torch.Tensor:
        nonlocal network
        if network is None:
            network = load_dinov2(model, weights, device)
        image = prepare_image(image_dir / name, size, network.patch_size).to(device)
        return network.forward_features(image)["x_norm_patchtokens"][0]

    return TokenCache(output_dir / TOKENS_FILE, encode, key)
