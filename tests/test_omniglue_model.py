"""The distinctive parts of OmniGlue's matcher, each against a direct computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from matchers.omniglue.model import (GuidedAttentionLayer, OmniGlue, dino_candidates, log_optimal_transport,
                                     mutual_matches)


def random_inputs(n0: int, n1: int, generator: torch.Generator, batch: int = 1) -> dict[str, torch.Tensor]:
    """A random pair in our matcher interface (descriptors = 256 SuperPoint + 768 DINOv2)."""
    size = torch.tensor([[640.0, 480.0]]).expand(batch, 2)

    def side(n: int) -> dict[str, torch.Tensor]:
        return {"keypoints": torch.rand(batch, n, 2, generator=generator) * size[:, None],
                "descriptors": torch.randn(batch, n, 1024, generator=generator),
                "scores": torch.rand(batch, n, generator=generator) * 0.9 + 0.1,
                "image_size": size.clone()}
    return {k + i: v for i, n in (("0", n0), ("1", n1)) for k, v in side(n).items()}


@pytest.fixture(scope="module")
def model() -> OmniGlue:
    torch.manual_seed(0)
    return OmniGlue().eval()


def test_dino_candidates_are_the_top_half_by_cosine_similarity():
    generator = torch.Generator().manual_seed(1)
    dino0, dino1 = torch.randn(2, 7, 16, generator=generator), torch.randn(2, 10, 16, generator=generator)
    allowed01, allowed10 = dino_candidates(dino0, dino1)
    for b in range(2):
        a, c = dino0[b].double().numpy(), dino1[b].double().numpy()
        cosine = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
        for i in range(7):
            expected = set(np.argsort(-cosine[i])[:5])  # top half of 10
            assert set(np.flatnonzero(allowed01[b, i].numpy())) == expected
        for j in range(10):
            expected = set(np.argsort(-cosine[:, j])[:3])  # top half of 7, rounded down
            assert set(np.flatnonzero(allowed10[b, j].numpy())) == expected


def test_dino_candidates_ignore_padded_keypoints():
    generator = torch.Generator().manual_seed(2)
    dino0, dino1 = torch.randn(1, 6, 8, generator=generator), torch.randn(1, 9, 8, generator=generator)
    mask1 = torch.arange(9)[None] < 6  # three padded keypoints in image 1
    allowed01, _ = dino_candidates(dino0, dino1, None, mask1)
    reference, _ = dino_candidates(dino0, dino1[:, :6])
    assert not allowed01[..., 6:].any()
    assert torch.equal(allowed01[..., :6], reference)


def test_guided_attention_values_carry_no_position():
    """With identical descriptors every value is the same vector, so whatever positions do to the
    attention weights, the update must be the same; a position-in-descriptor design would fail."""
    torch.manual_seed(3)
    layer = GuidedAttentionLayer(32, 4).eval()
    x = torch.randn(1, 1, 32).expand(1, 12, 32)
    positions = torch.randn(1, 12, 32)
    out = layer(x, x, None, positions, positions)
    permuted = positions[:, torch.randperm(12)]
    torch.testing.assert_close(layer(x, x, None, permuted, permuted), out)
    torch.testing.assert_close(layer(x, x, None, 5 * torch.randn(1, 12, 32), 5 * torch.randn(1, 12, 32)), out)
    # control: with distinct descriptors, positions do steer the attention
    y = torch.randn(1, 12, 32)
    assert not torch.allclose(layer(y, y, None, positions, positions), layer(y, y, None, permuted, permuted))


@pytest.fixture(scope="module")
def sharp_model() -> OmniGlue:
    """float64 matcher whose queries, keys and position features are scaled up x6, so that
    attention is far from uniform and positions visibly steer it (at PyTorch's default init the
    attention is nearly uniform and positions change the output by only ~1e-4)."""
    torch.manual_seed(10)
    model = OmniGlue().eval().double()
    with torch.no_grad():
        for layer in model.layers:
            layer.query.weight.mul_(6)
            layer.key.weight.mul_(6)
        model.keypoint_encoder.linears[-1].weight.mul_(6)
    return model


def test_final_descriptors_are_free_of_positional_terms(sharp_model):
    """Full 18-layer matcher: keypoints with one shared SuperPoint descriptor per image get final
    descriptors that do not depend on where the keypoints are (positions permuted or redrawn)."""
    generator = torch.Generator().manual_seed(4)
    data = {k: v.double() for k, v in random_inputs(20, 16, generator).items()}
    for i, n in (("0", 20), ("1", 16)):
        data["descriptors" + i][..., :256] = torch.randn(1, 1, 256, generator=generator).expand(1, n, 256)
    moved = dict(data, keypoints0=data["keypoints0"][:, torch.randperm(20, generator=generator)],
                 keypoints1=torch.rand(1, 16, 2, generator=generator).double() * 400)
    with torch.inference_mode():
        final0, final1 = sharp_model.describe(data)
        moved0, moved1 = sharp_model.describe(moved)
    torch.testing.assert_close(moved0, final0, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(moved1, final1, atol=1e-10, rtol=1e-10)
    # all rows equal: nothing position-dependent reached the descriptors
    torch.testing.assert_close(final0, final0[:, :1].expand_as(final0), atol=1e-10, rtol=1e-10)
    # control: with distinct descriptors the same position change moves the result (through attention)
    distinct = dict(data, descriptors0=torch.randn(1, 20, 1024, generator=generator).double())
    with torch.inference_mode():
        steered0, _ = sharp_model.describe(distinct)
        moved_steered0, _ = sharp_model.describe(dict(distinct, keypoints0=moved["keypoints0"]))
    assert (moved_steered0 - steered0).abs().max() > 1e-2


def test_matcher_is_equivariant_to_keypoint_order(model):
    generator = torch.Generator().manual_seed(5)
    data = random_inputs(24, 18, generator)
    order = torch.randperm(24, generator=generator)
    permuted = dict(data, **{k: data[k][:, order] for k in ("keypoints0", "descriptors0", "scores0")})
    with torch.inference_mode():
        final0, final1 = model.describe(data)
        perm0, perm1 = model.describe(permuted)
    torch.testing.assert_close(perm0, final0[:, order], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(perm1, final1, atol=1e-4, rtol=1e-4)


def reference_sinkhorn(scores: np.ndarray, alpha: float, iterations: int) -> np.ndarray:
    """Plain (probability-domain) Sinkhorn on the dustbin-augmented kernel, float64: marginals
    (1, ..., 1, m) / (m + n) and (1, ..., 1, n) / (m + n); returns (m + n) * P."""
    n, m = scores.shape
    z = np.full((n + 1, m + 1), alpha)
    z[:n, :m] = scores
    kernel = np.exp(z)
    mu = np.append(np.ones(n), m) / (m + n)
    nu = np.append(np.ones(m), n) / (m + n)
    a, b = np.ones(n + 1), np.ones(m + 1)
    for _ in range(iterations):
        a = mu / (kernel @ b)
        b = nu / (kernel.T @ a)
    return (m + n) * a[:, None] * kernel * b[None]


def test_log_optimal_transport_matches_plain_sinkhorn():
    generator = torch.Generator().manual_seed(6)
    scores = torch.randn(1, 9, 6, generator=generator, dtype=torch.float64) * 3
    alpha = torch.tensor(0.7, dtype=torch.float64)
    ours = log_optimal_transport(scores, alpha, 50)[0].exp().numpy()
    np.testing.assert_allclose(ours, reference_sinkhorn(scores[0].numpy(), 0.7, 50), rtol=1e-9, atol=1e-12)
    # converged: every keypoint's row sums to 1, each dustbin to the other image's count
    converged = log_optimal_transport(scores, alpha, 500)[0].exp()
    torch.testing.assert_close(converged.sum(1), torch.cat([torch.ones(9), torch.tensor([6.0])]).double())
    torch.testing.assert_close(converged.sum(0), torch.cat([torch.ones(6), torch.tensor([9.0])]).double())


def test_log_optimal_transport_padding_gives_the_unpadded_result():
    generator = torch.Generator().manual_seed(7)
    scores = torch.randn(1, 8, 5, generator=generator)
    padded = torch.nn.functional.pad(scores, (0, 3, 0, 2), value=4.0)
    mask0, mask1 = torch.arange(10)[None] < 8, torch.arange(8)[None] < 5
    alpha = torch.tensor(1.0)
    full = log_optimal_transport(padded, alpha, 30, mask0, mask1)[0].exp()
    plain = log_optimal_transport(scores, alpha, 30)[0].exp()
    torch.testing.assert_close(full[:8, :5], plain[:8, :5])
    torch.testing.assert_close(full[:8, -1], plain[:8, -1])
    assert float(full[8:10].sum()) == 0 and float(full[:, 5:8].sum()) == 0


def test_mutual_matches_keep_mutual_maxima_above_threshold():
    assignment = torch.tensor([[[0.90, 0.05, 0.00],
                                [0.80, 0.10, 0.05],   # best is column 0, taken by row 0: not mutual
                                [0.00, 0.00, 0.0005]]])  # mutual but below 1e-3
    matches, scores = mutual_matches(assignment, 1e-3)
    assert matches.tolist() == [[0, -1, -1]]
    assert scores[0].tolist() == pytest.approx([0.9, 0.0, 0.0])


def test_padded_batch_matches_pairs_run_alone(model):
    generator = torch.Generator().manual_seed(8)
    pairs = [random_inputs(12, 9, generator), random_inputs(7, 11, generator)]
    batch = {}
    for key in pairs[0]:
        side = key[-1]
        length = max(p[key].shape[1] for p in pairs) if key[:-1] != "image_size" else None
        items = [p[key][0] for p in pairs]
        if length is not None:
            items = [torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[0]) if t.ndim == 2
                                             else (0, length - t.shape[0])) for t in items]
        batch[key] = torch.stack(items)
        if key.startswith("keypoints"):
            batch["mask" + side] = torch.stack([torch.arange(length) < p[key].shape[1] for p in pairs])
    with torch.inference_mode():
        together = model(batch)
        for index, pair in enumerate(pairs):
            alone = model(pair)
            n0, n1 = pair["keypoints0"].shape[1], pair["keypoints1"].shape[1]
            torch.testing.assert_close(together["soft_assignment"][index, :n0, :n1], alone["soft_assignment"][0],
                                       atol=1e-5, rtol=1e-4)
            assert torch.equal(together["matches0"][index, :n0], alone["matches0"][0])


def test_wrong_descriptor_width_is_a_clear_error(model):
    data = random_inputs(4, 4, torch.Generator().manual_seed(9))
    data["descriptors0"] = data["descriptors0"][..., :256]
    with pytest.raises(ValueError, match="256 SuperPoint \\+ 768 DINOv2"):
        model(data)


def test_an_image_without_keypoints_gives_no_matches(model):
    data = random_inputs(5, 0, torch.Generator().manual_seed(11))
    with torch.inference_mode():
        out = model(data)
    assert out["matches0"].tolist() == [[-1] * 5] and out["matches1"].shape == (1, 0)
