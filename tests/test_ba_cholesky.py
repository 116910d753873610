"""Supernodal sparse Cholesky (recon.ba.cholesky) against dense linear algebra on small patterns."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.ba import cholesky
from recon.ba.cholesky import SymbolicCholesky, elimination_structure, postorder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ba_cholesky import diagonally_dominant_values, scipy_matrix, survey_pattern  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize("blocked_from", [256, 1])
@pytest.mark.parametrize("nx, ny, intrinsics, radius", [(1, 1, 0, 1), (2, 3, 0, 1), (12, 15, 0, 1), (9, 11, 3, 2)])
def test_supernodal_solve_matches_dense_solve(nx, ny, intrinsics, radius, blocked_from, monkeypatch):
    """Both ways of forming the updates (one product, or row blocks up to the diagonal from
    ``blocked_from`` rows on) give the dense solution."""
    monkeypatch.setattr(cholesky, "BLOCKED_UPDATE_MIN_ROWS", blocked_from)
    node_of_var, rows, cols = survey_pattern(nx, ny, intrinsics, radius)
    values, diagonal = diagonally_dominant_values(rows, cols, seed=nx * ny)
    s = torch.from_numpy(scipy_matrix(rows, cols, values, diagonal).toarray())
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
    s = torch.from_numpy(scipy_matrix(rows, cols, values, diagonal).toarray())
    assert float(s[0, 4]) == pytest.approx(0.75)
    assert torch.allclose(s @ x, rhs, atol=1e-12)


def test_indefinite_matrix_is_reported():
    node_of_var, rows, cols = survey_pattern(6, 7, 3)
    values, diagonal = diagonally_dominant_values(rows, cols, seed=3)
    diagonal[17] = -1.0
    assert SymbolicCholesky(node_of_var, rows, cols, CPU).factorize(values, diagonal) is None


def test_dense_pattern_is_one_supernode():
    # A row of 8 images that all share points: every block is present.
    symbolic = SymbolicCholesky(*survey_pattern(1, 8, intrinsics=0, radius=7), CPU)
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
