"""OmniGlue matcher (Jiang et al., CVPR 2024) in PyTorch.

The official model is a TensorFlow SavedModel (``og_export``) whose Python code is not public;
the serving signature takes SuperPoint keypoints/descriptors/scores, DINOv2 descriptors sampled
at the keypoints and the image sizes, and returns a (N+1, M+1) soft assignment. This module
rebuilds the graph from the paper, from that signature and from the 317 variable shapes of the
export (``fixtures/manifests/omniglue_og_export_tf.json``), which fix every layer size:

* keypoint position encoder: MLP 3 -> 32 -> 64 -> 128 -> 256 (Dense, BatchNorm, ReLU) -> 256
  on ``(x, y, score)``; positions normalised SuperGlue's way, ``(xy - size/2) / (0.7 max(size))``.
* 18 attention layers alternating self (even) and cross (odd), weights shared by both images;
  each: q, k, v, merge (256 x 256, 4 heads) and a residual MLP [d | message] 512 -> 512
  (BatchNorm, ReLU) -> 256.
* position-guided attention: in self layers queries and keys read ``d + p`` (p = encoded
  position), values read ``d`` only; cross layers use ``d`` only; positions never enter the
  descriptors, so the final descriptors carry no positional term.
* DINOv2 graph pruning: a keypoint of one image attends, in cross layers, only to the top half of
  the other image's keypoints by cosine similarity of their DINOv2 features.
* final projection 256 x 256, scores ``<f0, f1> / sqrt(256)``, one learned dustbin score,
  log-space Sinkhorn (optimal transport) with 100 iterations; matches are mutual arg-maxima of the
  soft assignment above ``match_threshold`` (1e-3 in ``omniglue_extract.py``).

What the shapes do not fix and is therefore inferred (documented in ``convert.py``): the order of
the variables inside a layer, the head split of the 256 channels (contiguous 64-channel heads),
whether cross layers also use positions (the paper's intra-image-only guidance is used), the
similarity used for pruning (cosine), and the number of Sinkhorn iterations (SuperGlue's 100).

Inputs (our matcher interface): ``keypoints0/1`` (B, N, 2) pixels, ``descriptors0/1`` (B, N,
256 + 768): the SuperPoint descriptor followed by the DINOv2 feature at the keypoint, as the
``omniglue_superpoint`` extractor writes them, ``scores0/1`` (B, N), ``image_size0/1`` (B, 2) =
(W, H), optional ``mask0/1`` (B, N) for padded batches. Outputs ``matches0`` (B, N0),
``matching_scores0`` (B, N0), ``matches1``, ``matching_scores1`` and ``soft_assignment``
(B, N0, N1) without dustbins.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base import BaseModel
from ..weights import Checkpoint, StateDict, register_checkpoint

BN_EPS = 1e-3  # Keras BatchNormalization default


def omniglue_state_dict(raw: dict[str, Any]) -> StateDict:
    """The matcher entry of our converter's output file."""
    if "matcher" not in raw:
        raise KeyError("not an OmniGlue checkpoint written by matchers.omniglue.convert (no 'matcher' entry)")
    return dict(raw["matcher"])


register_checkpoint(Checkpoint(
    name="omniglue",
    url="",
    filename="omniglue_from_tf.pth",
    license="Apache-2.0 (google-research/omniglue)",
    extract=omniglue_state_dict,
    notes="Produce it from the official SavedModels: download https://storage.googleapis.com/omniglue/og_export.zip "
          "and rpautrat's sp_v6.tgz, then run `python -m matchers.omniglue.convert og_export/ sp_v6/ "
          "omniglue_from_tf.pth` (needs tensorflow, only for the conversion).",
))


def normalize_keypoints(keypoints: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """SuperGlue's normalisation: ``(xy - size/2) / (0.7 max(W, H))``; (B, N, 2), (B, 2) -> (B, N, 2)."""
    size = image_size.to(keypoints)
    return (keypoints - size[:, None] / 2) / (0.7 * size.max(-1).values[:, None, None])


def batch_norm(x: torch.Tensor, norm: nn.BatchNorm1d) -> torch.Tensor:
    """BatchNorm over the channel (last) axis of a ``(B, N, C)`` tensor."""
    return norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class KeypointEncoder(nn.Module):
    """``(x, y, score)`` -> 256-d position feature p: Dense+BN+ReLU x4 then a Dense layer."""

    def __init__(self, channels: tuple[int, ...] = (3, 32, 64, 128, 256, 256)) -> None:
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(c, eps=BN_EPS) for c in channels[1:-1])

    def forward(self, keypoints: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) normalised positions, (B, N) scores -> (B, N, 256)."""
        x = torch.cat([keypoints, scores[..., None].to(keypoints)], -1)
        for linear, norm in zip(self.linears[:-1], self.norms):
            x = F.relu(batch_norm(linear(x), norm))
        return self.linears[-1](x)


class GuidedAttentionLayer(nn.Module):
    """One propagation step: ``d <- d + MLP([d | merge(attention)])``.

    Position guidance: when ``position`` is given (self layers), queries and keys are computed
    from ``d + p``; values always from ``d`` alone, so the message, and hence the update, is a
    convex combination of descriptor-only values passed through the MLP.
    """

    def __init__(self, dim: int = 256, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.merge = nn.Linear(dim, dim)
        self.mlp_in = nn.Linear(2 * dim, 2 * dim)
        self.mlp_norm = nn.BatchNorm1d(2 * dim, eps=BN_EPS)
        self.mlp_out = nn.Linear(2 * dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, source: torch.Tensor, allowed: torch.Tensor | None,
                position: torch.Tensor | None = None, source_position: torch.Tensor | None = None) -> torch.Tensor:
        """Update ``x`` (B, N, C) with messages from ``source`` (B, M, C).

        ``allowed`` (B, N, M) bool: which source keypoints each keypoint may attend to (None: all).
        ``position``/``source_position`` (B, N|M, C): position features added to queries/keys.
        """
        q_in = x if position is None else x + position
        k_in = source if source_position is None else source + source_position
        q, k, v = self._heads(self.query(q_in)), self._heads(self.key(k_in)), self._heads(self.value(source))
        mask = None if allowed is None else allowed[:, None]
        message = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        message = self.merge(message.transpose(1, 2).reshape(x.shape))
        hidden = F.relu(batch_norm(self.mlp_in(torch.cat([x, message], -1)), self.mlp_norm))
        return x + self.mlp_out(hidden)


def dino_candidates(dino0: torch.Tensor, dino1: torch.Tensor, mask0: torch.Tensor | None = None,
                    mask1: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv2-guided inter-image graph: for each keypoint, the top half of the other image's
    keypoints by cosine similarity of DINOv2 features.

    Args:
        dino0, dino1: ``(B, N, E)``, ``(B, M, E)`` DINOv2 features at the keypoints.
        mask0, mask1: ``(B, N)``, ``(B, M)`` valid keypoints (padding excluded) or None.

    Returns:
        ``allowed01`` (B, N, M) and ``allowed10`` (B, M, N) bool: row i keeps the
        ``max(1, valid_count // 2)`` most similar valid keypoints of the other image (ties at the
        threshold are all kept).
    """
    sim = F.normalize(dino0, dim=-1) @ F.normalize(dino1, dim=-1).transpose(1, 2)
    b, n, m = sim.shape
    mask0 = sim.new_ones(b, n, dtype=torch.bool) if mask0 is None else mask0.bool()
    mask1 = sim.new_ones(b, m, dtype=torch.bool) if mask1 is None else mask1.bool()
    return _top_half(sim, mask1), _top_half(sim.transpose(1, 2), mask0)


def _top_half(sim: torch.Tensor, valid_columns: torch.Tensor) -> torch.Tensor:
    """Per row of ``sim`` (B, R, C), keep the best half of the valid columns (B, C)."""
    sim = sim.masked_fill(~valid_columns[:, None], float("-inf"))
    k = (valid_columns.sum(-1) // 2).clamp(min=1)  # (B,)
    ordered = sim.sort(-1, descending=True).values
    kth = ordered.gather(-1, (k - 1).view(-1, 1, 1).expand(-1, sim.shape[1], 1))
    return (sim >= kth) & valid_columns[:, None]


def log_optimal_transport(scores: torch.Tensor, alpha: torch.Tensor, iterations: int,
                          mask0: torch.Tensor | None = None, mask1: torch.Tensor | None = None) -> torch.Tensor:
    """Log-space Sinkhorn with one dustbin row and column (SuperGlue's optimal transport).

    Each of the n (valid) keypoints of image 0 has mass 1 and the dustbin column mass m, and
    symmetrically; all marginals are divided by m + n. Padded keypoints get zero mass.

    Args:
        scores: ``(B, N, M)`` similarities; alpha: scalar dustbin score.
        mask0, mask1: ``(B, N)``, ``(B, M)`` valid keypoints or None.

    Returns:
        ``(B, N + 1, M + 1)`` log assignment (``log P - log(m+n)`` normalised so each valid row sums
        to 1 in probability).
    """
    b, n, m = scores.shape
    mask0 = scores.new_ones(b, n, dtype=torch.bool) if mask0 is None else mask0.bool()
    mask1 = scores.new_ones(b, m, dtype=torch.bool) if mask1 is None else mask1.bool()
    ns, ms = mask0.sum(-1).to(scores), mask1.sum(-1).to(scores)  # (B,)
    couplings = torch.cat([torch.cat([scores, alpha.expand(b, n, 1)], -1),
                           torch.cat([alpha.expand(b, 1, m), alpha.expand(b, 1, 1)], -1)], 1)
    norm = -(ns + ms).log()  # (B,)
    neg_inf = scores.new_tensor(float("-inf"))
    log_mu = torch.cat([torch.where(mask0, norm[:, None], neg_inf), (ms.log() + norm)[:, None]], 1)
    log_nu = torch.cat([torch.where(mask1, norm[:, None], neg_inf), (ns.log() + norm)[:, None]], 1)
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iterations):
        u = log_mu - torch.logsumexp(couplings + v[:, None], 2)
        v = log_nu - torch.logsumexp(couplings + u[:, :, None], 1)
    return couplings + u[:, :, None] + v[:, None] - norm[:, None, None]


def mutual_matches(assignment: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual arg-maxima of a (B, N, M) soft assignment above ``threshold`` (OmniGlue's
    ``soft_assignment_to_match_matrix``): ``matches0`` (B, N) long, -1 for none, and their scores."""
    max0, index0 = assignment.max(2)
    index1 = assignment.argmax(1)
    arange = torch.arange(assignment.shape[1], device=assignment.device)
    valid = (index1.gather(1, index0) == arange[None]) & (max0 > threshold)
    return torch.where(valid, index0, -1), torch.where(valid, max0, torch.zeros_like(max0))


class OmniGlue(BaseModel):
    """OmniGlue matcher; see the module docstring for the graph and its inputs."""

    default_conf = {
        "descriptor_dim": 256,
        "dino_dim": 768,
        "num_layers": 18,
        "num_heads": 4,
        "sinkhorn_iterations": 100,
        "match_threshold": 1e-3,
    }
    required_inputs = ("keypoints0", "keypoints1", "descriptors0", "descriptors1", "scores0", "scores1",
                       "image_size0", "image_size1")
    kind = "matcher"
    supports_padding = True

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        dim = self.conf["descriptor_dim"]
        self.keypoint_encoder = KeypointEncoder((3, 32, 64, 128, dim, dim))
        self.layers = nn.ModuleList(GuidedAttentionLayer(dim, self.conf["num_heads"])
                                    for _ in range(self.conf["num_layers"]))
        self.final_proj = nn.Linear(dim, dim)
        self.bin_score = nn.Parameter(torch.tensor(1.0))

    def split_descriptors(self, descriptors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 256 + 768) extractor output -> SuperPoint (B, N, 256) and DINOv2 (B, N, 768) parts."""
        d, e = self.conf["descriptor_dim"], self.conf["dino_dim"]
        if descriptors.shape[-1] != d + e:
            raise ValueError(f"OmniGlue expects descriptors of {d} SuperPoint + {e} DINOv2 channels "
                             f"(the omniglue_superpoint extractor), got {descriptors.shape[-1]}")
        return descriptors[..., :d], descriptors[..., d:]

    def describe(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Final matching descriptors ``(B, N, 256)``, ``(B, M, 256)`` after the 18 layers and the projection."""
        self.check_inputs(data)
        desc0, dino0 = self.split_descriptors(data["descriptors0"])
        desc1, dino1 = self.split_descriptors(data["descriptors1"])
        mask0, mask1 = data.get("mask0"), data.get("mask1")
        pos0 = self.keypoint_encoder(normalize_keypoints(data["keypoints0"], data["image_size0"]), data["scores0"])
        pos1 = self.keypoint_encoder(normalize_keypoints(data["keypoints1"], data["image_size1"]), data["scores1"])
        allowed01, allowed10 = dino_candidates(dino0, dino1, mask0, mask1)
        self_mask0 = None if mask0 is None else mask0[:, None, :].expand(-1, mask0.shape[1], -1)
        self_mask1 = None if mask1 is None else mask1[:, None, :].expand(-1, mask1.shape[1], -1)
        for index, layer in enumerate(self.layers):
            if index % 2 == 0:  # intra-image, position-guided
                desc0, desc1 = (layer(desc0, desc0, self_mask0, pos0, pos0),
                                layer(desc1, desc1, self_mask1, pos1, pos1))
            else:  # inter-image, restricted to the DINOv2 candidates
                desc0, desc1 = layer(desc0, desc1, allowed01), layer(desc1, desc0, allowed10)
        return self.final_proj(desc0), self.final_proj(desc1)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(data)
        (b, n0), n1 = data["keypoints0"].shape[:2], data["keypoints1"].shape[1]
        if n0 == 0 or n1 == 0:  # nothing to match (e.g. a blank image): no graph to build
            empty = data["keypoints0"].new_zeros(b, n0, n1)
            none0, none1 = empty.new_full((b, n0), -1, dtype=torch.long), empty.new_full((b, n1), -1, dtype=torch.long)
            return {"matches0": none0, "matching_scores0": empty.new_zeros(b, n0), "matches1": none1,
                    "matching_scores1": empty.new_zeros(b, n1), "soft_assignment": empty}
        mdesc0, mdesc1 = self.describe(data)
        mask0, mask1 = data.get("mask0"), data.get("mask1")
        scores = mdesc0 @ mdesc1.transpose(1, 2) / mdesc0.shape[-1] ** 0.5
        log_assignment = log_optimal_transport(scores, self.bin_score, self.conf["sinkhorn_iterations"], mask0, mask1)
        assignment = log_assignment[:, :-1, :-1].exp()
        # OmniGlue drops matches of zero-score (padding) keypoints.
        assignment = assignment * (data["scores0"] > 0)[:, :, None] * (data["scores1"] > 0)[:, None]
        matches0, scores0 = mutual_matches(assignment, self.conf["match_threshold"])
        matches1, scores1 = mutual_matches(assignment.transpose(1, 2), self.conf["match_threshold"])
        return {"matches0": matches0, "matching_scores0": scores0, "matches1": matches1,
                "matching_scores1": scores1, "soft_assignment": assignment}
