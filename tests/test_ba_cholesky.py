"""Supernodal sparse Cholesky (recon.ba.cholesky) against dense linear algebra on small patterns."""
import numpy as np
import pytest
import torch

from recon.ba.cholesky import SymbolicCholesky, elimination_structure, postorder

CPU = torch.device("cpu")


def block_entries(pairs: list[tuple[int, int]], node_vars: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Entries (rows, cols) of the dense blocks of node pairs (a, b): all of an a != b block, the
    lower triangle of an a == a block (each symmetric pair once)."""
    rows, cols = [], []
    for a, b in pairs:
        r, c = np.meshgrid(node_vars[a], node_vars[b], indexing="ij")
        keep = (r >= c) if a == b else np.ones_like(r, dtype=bool)
        rows.append(r[keep])
        cols.append(c[keep])
    return np.concatenate(rows), np.concatenate(cols)


def survey_pattern(nx: int, ny: int, intrinsics: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grid of images (6 variables each) linked to their 8 neighbours, all sharing one camera
    with ``intrinsics`` variables: the pattern of an aerial survey's reduced camera system."""
    images = nx * ny
    sizes = [6] * images + ([intrinsics] if intrinsics else [])
    node_vars = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])
    pairs = [(k, k) for k in range(len(sizes))]
    for i in range(nx):
        for j in range(ny):
            for di, dj in [(0, 1), (1, 0), (1, 1), (1, -1)]:
                if 0 <= i + di < nx and 0 <= j + dj < ny:
                    pairs.append((i * ny + j, (i + di) * ny + j + dj))
            if intrinsics:
                pairs.append((i * ny + j, images))
    node_of_var = np.repeat(np.arange(len(sizes)), sizes)
    return (node_of_var, *block_entries(pairs, node_vars))


def dense_matrix(rows: np.ndarray, cols: np.ndarray, values: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix the entry convention describes: entry e adds to (r, c) and (c, r),
    once when r == c."""
    n = diagonal.numel()
    half = torch.zeros(n, n, dtype=values.dtype).index_put_((torch.from_numpy(rows), torch.from_numpy(cols)), values, accumulate=True)
    return half + half.T - torch.diag(torch.diagonal(half)) + torch.diag(diagonal)


def random_spd_values(rows: np.ndarray, cols: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random off-diagonal values and a diagonal that makes S strictly diagonally dominant, hence
    positive definite (Gershgorin)."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(rows.size, generator=gen, dtype=torch.float64)
    values[torch.from_numpy(rows == cols)] = 0.0
    n = int(max(rows.max(), cols.max())) + 1
    row_sums = torch.zeros(n, dtype=torch.float64).index_add_(0, torch.from_numpy(rows), values.abs())
    row_sums.index_add_(0, torch.from_numpy(cols), values.abs())
    return values, row_sums + 0.1


@pytest.mark.parametrize("nx, ny, intrinsics", [(1, 1, 0), (2, 3, 0), (12, 15, 0), (9, 11, 3)])
def test_supernodal_solve_matches_dense_solve(nx, ny, intrinsics):
    node_of_var, rows, cols = survey_pattern(nx, ny, intrinsics)
    values, diagonal = random_spd_values(rows, cols, seed=nx * ny)
    s = dense_matrix(rows, cols, values, diagonal)
    rhs = torch.randn(s.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    factor = SymbolicCholesky(node_of_var, rows, cols, CPU).factorize(values, diagonal)
    x = factor.solve(rhs)
    expected = torch.linalg.solve(s, rhs)
    assert torch.allclose(x, expected, rtol=1e-9, atol=1e-11)


def test_repeated_entries_are_summed_and_variables_keep_their_order():
    # Two variables per node, nodes given out of order, the same entry contributed three times.
    node_of_var = np.array([2, 0, 2, 0, 1, 1])
    rows = np.array([0, 2, 2, 1, 3, 4, 5, 5, 0, 0, 0])
    cols = np.array([0, 0, 2, 1, 1, 4, 4, 5, 4, 4, 4])
    values = torch.tensor([4.0, 1.0, 5.0, 3.0, 0.5, 6.0, -1.0, 4.0, 0.25, 0.25, 0.25], dtype=torch.float64)
    diagonal = torch.full((6,), 0.1, dtype=torch.float64)
    rhs = torch.arange(1.0, 7.0, dtype=torch.float64)
    x = SymbolicCholesky(node_of_var, rows, cols, CPU).factorize(values, diagonal).solve(rhs)
    s = dense_matrix(rows, cols, values, diagonal)
    assert float(s[0, 4]) == pytest.approx(0.75)
    assert torch.allclose(s @ x, rhs, atol=1e-12)


def test_indefinite_matrix_is_reported():
    node_of_var, rows, cols = survey_pattern(6, 7, 3)
    values, diagonal = random_spd_values(rows, cols, seed=3)
    diagonal[17] = -1.0
    assert SymbolicCholesky(node_of_var, rows, cols, CPU).factorize(values, diagonal) is None


def test_dense_pattern_is_one_supernode():
    node_vars = np.split(np.arange(40), 8)
    pairs = [(a, b) for a in range(8) for b in range(a, 8)]
    symbolic = SymbolicCholesky(np.repeat(np.arange(8), 5), *block_entries(pairs, node_vars), CPU)
    assert symbolic.num_supernodes == 1


def test_elimination_tree_of_an_arrow_pattern():
    # Nodes 0..2 each linked to node 3 only: a star eliminated leaves first, no fill.
    parent, structure = elimination_structure([np.array([3]), np.array([3]), np.array([3]), np.array([], dtype=np.int64)])
    assert parent.tolist() == [3, 3, 3, -1]
    assert [s.tolist() for s in structure] == [[3], [3], [3], []]
    # A path 0-1-2 eliminated middle first fills in the edge 0-2.
    parent, structure = elimination_structure([np.array([1, 2]), np.array([2]), np.array([], dtype=np.int64)])
    assert parent.tolist() == [1, 2, -1]
    assert [s.tolist() for s in structure] == [[1, 2], [2], []]


def test_postorder_puts_children_before_parents_and_keeps_subtrees_contiguous():
    parent = np.array([4, 2, 4, -1, -1, 3])  # trees {0, 1, 2 -> 4} and {5 -> 3}
    order = postorder(parent)
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    assert sorted(order.tolist()) == list(range(6))
    assert all(position[j] < position[p] for j, p in enumerate(parent) if p >= 0)
    subtree = sorted(position[[0, 1, 2, 4]].tolist())
    assert subtree == list(range(subtree[0], subtree[0] + 4))
