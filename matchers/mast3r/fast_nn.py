"""Fast reciprocal nearest neighbours between two dense descriptor maps (MASt3R's matcher).

Matching every pixel of one map against every pixel of the other costs (HW)^2. MASt3R instead
starts from a sparse set of seeds in image 1 (a grid with step ``subsample``) and alternates
nearest-neighbour steps 1 -> 2 -> 1 ...; a seed whose chain stops moving sits on a reciprocal
(mutual) nearest-neighbour pair, which is kept. This reproduces the official ``fast_reciprocal_NNs``
exactly (same seeds, same stopping rule, same output order) in vectorised torch on CPU or GPU:

- seeds: pixels ``(S/2 + kS)`` in y and x, flattened as ``y * W + x``, sorted and unique;
- up to 10 iterations, each an NN step 1 -> 2 then 2 -> 1; a seed stops as soon as a step returns
  the index of the previous iteration (either side); seeds still moving after the last iteration
  are dropped;
- explicit seeds run one iteration; with ``pixel_tol > 0`` a seed is kept if its round trip lands
  within ``pixel_tol`` pixels and the seed position itself is returned;
- output: unique (idx1, idx2) pairs sorted by idx1, then idx2.

Nearest neighbours are exact (brute force), computed in blocks of ``block_size`` x ``block_size``
scores so memory stays bounded at any resolution; ``dist="dot"`` maximises the dot product (unit
descriptors), ``dist="l2"`` minimises the Euclidean distance. Ties go to the lowest index.
"""
from __future__ import annotations

import torch

BLOCK_SIZE = 2 ** 13
MAX_ITER = 10


def _scores(a: torch.Tensor, b: torch.Tensor, dist: str) -> torch.Tensor:
    """(n, D) x (m, D) -> (n, m) similarity: higher is nearer."""
    if dist == "dot":
        return a @ b.T
    if dist == "l2":
        return -torch.cdist(a, b)
    raise ValueError(f"unknown distance {dist!r} (use 'dot' or 'l2')")


def nearest_neighbours(queries: torch.Tensor, database: torch.Tensor, dist: str = "dot",
                       block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """Index of each query's nearest database row: (Q, D), (N, D) -> (Q,) int64.

    Blocked over both sets; the first (lowest-index) best wins ties, as ``torch.max`` does.
    """
    best = torch.full((len(queries),), -float("inf"), device=queries.device, dtype=queries.dtype)
    index = torch.zeros(len(queries), device=queries.device, dtype=torch.int64)
    for i in range(0, len(queries), block_size):
        q = queries[i:i + block_size]
        for j in range(0, len(database), block_size):
            value, arg = _scores(q, database[j:j + block_size], dist).max(dim=1)
            better = value > best[i:i + block_size]
            best[i:i + block_size] = torch.where(better, value, best[i:i + block_size])
            index[i:i + block_size] = torch.where(better, arg + j, index[i:i + block_size])
    return index


def reciprocal_nearest_neighbours(a: torch.Tensor, b: torch.Tensor, dist: str = "dot",
                                  block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force NN in both directions: (nn_a (len(a),) into b, nn_b (len(b),) into a).

    ``nn_b[nn_a[i]] == i`` marks mutual nearest neighbours.
    """
    return nearest_neighbours(a, b, dist, block_size), nearest_neighbours(b, a, dist, block_size)


def grid_seeds(height: int, width: int, subsample: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Seed pixels ``(S/2 + kS)`` of an H x W map: (x, y), each (n,) int64 in raster order."""
    y = torch.arange(subsample // 2, height, subsample, device=device)
    x = torch.arange(subsample // 2, width, subsample, device=device)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return xx.reshape(-1), yy.reshape(-1)


def fast_reciprocal_nns(desc1: torch.Tensor, desc2: torch.Tensor,
                        seeds: int | tuple[torch.Tensor, torch.Tensor] = 8, pixel_tol: float = 0,
                        dist: str = "dot", block_size: int = BLOCK_SIZE,
                        max_iter: int = MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """Reciprocal matches from seeds in image 1 (see the module docstring).

    Args:
        desc1, desc2: (H1, W1, D), (H2, W2, D) descriptor maps on one device.
        seeds: grid step ``S`` (int), or explicit seed pixels ``(x, y)`` (each (n,) int).
        pixel_tol: with explicit seeds, keep seeds whose round trip ends within this many pixels.
    Returns:
        idx1, idx2: (M,) int64 flat pixel indices (y * W + x) of the matches, sorted by idx1 then idx2.
    """
    H1, W1, D = desc1.shape
    H2, W2, D2 = desc2.shape
    if D != D2:
        raise ValueError(f"descriptor dimensions differ: {D} vs {D2}")
    flat1, flat2 = desc1.reshape(-1, D), desc2.reshape(-1, D)
    device = desc1.device
    if isinstance(seeds, int):
        if pixel_tol > 0:
            raise ValueError("pixel_tol > 0 needs explicit seeds (x, y), as officially")
        x, y = grid_seeds(H1, W1, seeds, device)
    else:
        x, y = (torch.as_tensor(v, device=device).long() for v in seeds)
        max_iter = 1
    start = torch.unique(x + W1 * y)  # sorted, no duplicates
    idx1, idx2 = start.clone(), torch.full_like(start, -1)
    old1, old2 = idx1.clone(), idx2.clone()
    active = torch.ones_like(start, dtype=torch.bool)
    for iteration in range(max_iter):
        if not bool(active.any()):
            break
        sel = active.nonzero().squeeze(1)
        idx2[sel] = nearest_neighbours(flat1[idx1[sel]], flat2, dist, block_size)
        active &= old2 != idx2
        sel = active.nonzero().squeeze(1)
        idx1[sel] = nearest_neighbours(flat2[idx2[sel]], flat1, dist, block_size)
        active &= old1 != idx1
        old1.copy_(idx1)
        old2.copy_(idx2)
    if pixel_tol > 0:
        dy = torch.div(idx1, W1, rounding_mode="floor") - torch.div(start, W1, rounding_mode="floor")
        dx = idx1 % W1 - start % W1
        keep = (dx.double().square() + dy.double().square()).sqrt() < pixel_tol
        idx1 = start  # the seed is returned, not where its round trip ended
    else:
        keep = ~active
    pairs1, pairs2, _ = unique_correspondences(idx1[keep], idx2[keep], H2 * W2)
    return pairs1, pairs2


def unique_correspondences(idx1: torch.Tensor, idx2: torch.Tensor, n2: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unique (idx1, idx2) pairs sorted by idx1 then idx2, with the position of each pair's first
    occurrence in the input (so per-match values can be taken from it), all (M,) int64."""
    keys = idx1 * n2 + idx2
    order = torch.argsort(keys, stable=True)
    sorted_keys = keys[order]
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    keys, order = sorted_keys[first], order[first]
    return torch.div(keys, n2, rounding_mode="floor"), keys % n2, order


def index_to_xy(index: torch.Tensor, width: int) -> torch.Tensor:
    """Flat pixel indices (M,) -> (M, 2) int64 (x, y)."""
    return torch.stack((index % width, torch.div(index, width, rounding_mode="floor")), dim=-1)


def _both_directions(a: torch.Tensor, b: torch.Tensor, subsample: int, pixel_tol: float, dist: str,
                     block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Matches seeded in a (a -> b) followed by matches seeded in b, as (idx_a, idx_b)."""
    if pixel_tol > 0:
        ab = fast_reciprocal_nns(a, b, grid_seeds(*a.shape[:2], subsample, a.device), pixel_tol, dist, block_size)
        ba = fast_reciprocal_nns(b, a, grid_seeds(*b.shape[:2], subsample, b.device), pixel_tol, dist, block_size)
    else:
        ab = fast_reciprocal_nns(a, b, subsample, 0, dist, block_size)
        ba = fast_reciprocal_nns(b, a, subsample, 0, dist, block_size)
    return torch.cat((ab[0], ba[1])), torch.cat((ab[1], ba[0]))


def correspondences_nonsym(desc1: torch.Tensor, desc2: torch.Tensor, conf1: torch.Tensor, conf2: torch.Tensor,
                           subsample: int = 8, pixel_tol: float = 0, dist: str = "dot",
                           block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matches of one decoder pass (official ``extract_correspondences_nonsym``, the COLMAP export path).

    ``desc1`` (H1,W1,D), ``desc2`` (H2,W2,D), ``conf1`` (H1,W1), ``conf2`` (H2,W2) from one
    ``decode_pair``. Returns ``xy1``, ``xy2`` (M, 2) int64 (x, y) and ``conf`` (M,) =
    min(conf1, conf2) of the first occurrence, sorted by image-1 pixel.
    """
    i1, i2 = _both_directions(desc1, desc2, subsample, pixel_tol, dist, block_size)
    c1, c2 = conf1.reshape(-1)[i1], conf2.reshape(-1)[i2]
    u1, u2, first = unique_correspondences(i1, i2, desc2.shape[0] * desc2.shape[1])
    return index_to_xy(u1, desc1.shape[1]), index_to_xy(u2, desc2.shape[1]), torch.minimum(c1, c2)[first]


def correspondences_symmetric(descs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                              confs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                              subsample: int = 8, dist: str = "dot",
                              block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matches of both decoder passes (official MASt3R-SfM ``extract_correspondences``).

    ``descs = (d11, d21, d22, d12)``: image 1 and 2 descriptors from ``decode_pair(1, 2)``, then
    image 2 and 1 from ``decode_pair(2, 1)``; ``confs`` the matching ``desc_conf`` maps. Both
    passes are matched in both directions; pairs are de-duplicated keeping the first occurrence, whose
    confidence is sqrt(q1 * q2) of that pass. Returns ``xy1``, ``xy2`` (M, 2) int64 and ``conf`` (M,).
    """
    d11, d21, d22, d12 = descs
    q11, q21, q22, q12 = confs
    i1, i2, c = [], [], []
    for a, b, qa, qb in ((d11, d21, q11, q21), (d12, d22, q12, q22)):
        ia, ib = _both_directions(a, b, subsample, 0, dist, block_size)
        i1.append(ia)
        i2.append(ib)
        c.append((qa.reshape(-1)[ia] * qb.reshape(-1)[ib]).sqrt())
    u1, u2, first = unique_correspondences(torch.cat(i1), torch.cat(i2), d22.shape[0] * d22.shape[1])
    return index_to_xy(u1, d11.shape[1]), index_to_xy(u2, d22.shape[1]), torch.cat(c)[first]
