"""The torch nearest-neighbour matcher against brute-force definitions."""
from __future__ import annotations

import torch

import matchers


def unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def brute_force(desc0, desc1, ratio, distance, mutual):
    """Reference: explicit loops over descriptors (the definition, not the implementation)."""
    dist = torch.cdist(desc0, desc1)
    result = []
    for i in range(len(desc0)):
        order = torch.argsort(dist[i])
        best = order[0].item()
        ok = True
        if ratio is not None and len(order) > 1:
            ok &= bool(dist[i, best] <= ratio * dist[i, order[1]])
        if distance is not None:
            ok &= bool(dist[i, best] <= distance)
        if mutual:
            ok &= torch.argmin(dist[:, best]).item() == i
            if ratio is not None and ok:
                col = torch.argsort(dist[:, best])
                ok &= bool(dist[col[0], best] <= ratio * dist[col[1], best])
            if distance is not None:
                ok &= bool(dist[i, best] <= distance)
        result.append(best if ok else -1)
    return torch.tensor(result)


def test_matches_equal_the_brute_force_definition():
    torch.manual_seed(0)
    desc0 = unit(torch.randn(60, 8))
    desc1 = unit(torch.cat([desc0[:40] + 0.15 * torch.randn(40, 8), torch.randn(30, 8)]))
    for ratio, distance, mutual in [(None, None, True), (0.8, None, True), (None, 0.5, False), (0.9, 0.7, True)]:
        model = matchers.load("nearest_neighbor", ratio_threshold=ratio, distance_threshold=distance,
                              mutual_check=mutual)
        out = model({"descriptors0": desc0[None], "descriptors1": desc1[None]})
        torch.testing.assert_close(out["matches0"][0], brute_force(desc0, desc1, ratio, distance, mutual))
        assert torch.all((out["matching_scores0"][0] > 0) == (out["matches0"][0] > -1))


def test_padded_batch_equals_pairs_one_by_one():
    torch.manual_seed(1)
    model = matchers.load("nearest_neighbor")
    pairs = [(unit(torch.randn(n, 16)), unit(torch.randn(m, 16))) for n, m in [(30, 50), (45, 20), (10, 10)]]
    singles = [model({"descriptors0": a[None], "descriptors1": b[None]})["matches0"][0] for a, b in pairs]
    n_max = max(a.shape[0] for a, _ in pairs)
    m_max = max(b.shape[0] for _, b in pairs)
    batch = {
        "descriptors0": torch.stack([torch.cat([a, torch.zeros(n_max - len(a), 16)]) for a, _ in pairs]),
        "descriptors1": torch.stack([torch.cat([b, torch.zeros(m_max - len(b), 16)]) for _, b in pairs]),
        "mask0": torch.stack([torch.arange(n_max) < len(a) for a, _ in pairs]),
        "mask1": torch.stack([torch.arange(m_max) < len(b) for _, b in pairs]),
    }
    batched = model(batch)["matches0"]
    for index, single in enumerate(singles):
        torch.testing.assert_close(batched[index, : len(single)], single)
        assert torch.all(batched[index, len(single):] == -1)


def test_empty_inputs_give_no_matches():
    model = matchers.load("nearest_neighbor")
    out = model({"descriptors0": torch.zeros(1, 0, 8), "descriptors1": unit(torch.randn(1, 5, 8))})
    assert out["matches0"].shape == (1, 0)
