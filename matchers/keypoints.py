"""Helpers shared by the sparse extractors: non-maximum suppression, image resizing and the
hloc keypoint convention.

Keypoint frames
---------------
Every extractor returns keypoints in the pixels of the tensor it was given, with the centre of
the top-left pixel at (0, 0) (hloc / LightGlue / kornia convention). When the pipeline resized the
original image before extraction, :func:`keypoints_to_original` maps them back exactly as hloc
(``extract_features.py``) and cvg/LightGlue (``Extractor.extract``) do::

    original = (keypoint + 0.5) * scale - 0.5,   scale = original_size / resized_size  (per axis)

so that pixel *areas*, not pixel centres, are scaled. COLMAP puts the top-left pixel centre at
(0.5, 0.5); hloc adds 0.5 when it imports keypoints into a COLMAP database, and so must we.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def simple_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """The max-pool non-maximum suppression of SuperPoint, ALIKED and hloc (``simple_nms``).

    A position survives if it equals the maximum of its ``(2 radius + 1)^2`` window (ties all
    survive). Two further rounds then zero the windows around the survivors and add positions that
    became the maximum of their own window; this is the reference behaviour every official
    SuperPoint / ALIKED checkpoint was evaluated with, so we keep it (kornia's ``nms2d`` keeps only
    strict maxima and therefore returns fewer keypoints, see ``matchers/aliked.py``).

    Args:
        scores: ``(B, H, W)`` or ``(B, 1, H, W)`` score map.
        radius: suppression radius in pixels (>= 0).

    Returns:
        ``scores`` with every suppressed position set to 0, same shape.
    """
    if radius < 0:
        raise ValueError(f"nms radius must be >= 0, got {radius}")

    def max_pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)

    zeros = torch.zeros_like(scores)
    max_mask = scores == max_pool(scores)
    for _ in range(2):
        suppressed = max_pool(max_mask.float()) > 0
        remaining = torch.where(suppressed, zeros, scores)
        new_max = remaining == max_pool(remaining)
        max_mask = max_mask | (new_max & ~suppressed)
    return torch.where(max_mask, scores, zeros)


def select_keypoints(scores: torch.Tensor, nms_radius: int, remove_borders: int, threshold: float,
                     max_num_keypoints: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SuperPoint's detection from a dense score map (B, H, W): max-pool NMS, borders of
    ``remove_borders`` pixels cleared, scores above ``threshold``, the ``max_num_keypoints`` best
    (<= 0: all). Returns keypoints (B, N, 2) as (x, y) pixel indices and their scores (B, N);
    every image of a batch must keep the same count."""
    scores = simple_nms(scores, nms_radius)
    if remove_borders:
        pad = remove_borders
        scores[:, :pad] = -1
        scores[:, :, :pad] = -1
        scores[:, -pad:] = -1
        scores[:, :, -pad:] = -1
    keypoints, kept = [], []
    for image_scores in scores:
        yx = torch.nonzero(image_scores > threshold)
        values = image_scores[yx[:, 0], yx[:, 1]]
        if 0 < max_num_keypoints < len(values):
            values, order = torch.topk(values, max_num_keypoints, sorted=True)
            yx = yx[order]
        keypoints.append(yx.flip(1).to(scores.dtype))
        kept.append(values)
    return stack_per_image(keypoints, what), stack_per_image(kept, what)


def keypoints_to_original(keypoints: torch.Tensor, scale: torch.Tensor | tuple[float, float]) -> torch.Tensor:
    """Map keypoints from a resized image back to the original image (hloc convention).

    Args:
        keypoints: ``(..., N, 2)`` x, y in the resized image's pixels (top-left pixel centre at 0).
        scale: ``(2,)`` or ``(..., 2)`` = (original_width / resized_width,
            original_height / resized_height), as hloc's ``extract_features`` computes it.

    Returns:
        ``(..., N, 2)`` keypoints in original-image pixels: ``(kp + 0.5) * scale - 0.5``.
    """
    scale = torch.as_tensor(scale, dtype=keypoints.dtype, device=keypoints.device)
    if scale.ndim > 1:
        scale = scale.unsqueeze(-2)
    return (keypoints + 0.5) * scale - 0.5


def resize_longest_side(image: torch.Tensor, resize_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize so the longest side is ``resize_max`` pixels, as cvg/LightGlue's ``extract`` does.

    This is LightGlue's ``ImagePreprocessor`` (``kornia.geometry.transform.resize(side="long",
    antialias=True)``, bilinear): the short side is truncated, e.g. 1080x695 -> 1024x658. Images
    are resized up as well as down, like LightGlue (hloc only shrinks, with cv2/PIL; the pipeline
    chooses). ``resize_max <= 0`` returns the image unchanged.

    Args:
        image: ``(B, C, H, W)`` float image.
        resize_max: target length of the longest side, or 0 for no resize.

    Returns:
        The resized image and ``scale`` ``(2,)`` = (W / W_new, H / H_new), the factor that
        :func:`keypoints_to_original` takes.
    """
    from kornia.geometry.transform import resize

    h, w = image.shape[-2:]
    if resize_max > 0:
        image = resize(image, resize_max, side="long", antialias=True, align_corners=None)
    scale = torch.tensor([w / image.shape[-1], h / image.shape[-2]], dtype=torch.float32, device=image.device)
    return image, scale


def stack_per_image(items: list[torch.Tensor], what: str) -> torch.Tensor:
    """Stack per-image tensors into a batch; extractors that keep a variable number of keypoints
    per image can only batch images that happen to get the same count (run one image at a time,
    as hloc does, or set a fixed keypoint budget in top-k mode)."""
    counts = {t.shape[0] for t in items}
    if len(counts) > 1:
        raise ValueError(f"{what}: images of one batch gave different keypoint counts {sorted(counts)}; "
                         "extract one image at a time")
    return torch.stack(items, 0)
