"""Sparse Cholesky of a survey's reduced camera system: recon's supernodal factorisation against
SuperLU (what recon.ba used before, in the same nested-dissection order) and dense Cholesky.

The matrix has the pattern of a BA's Schur complement on an aerial survey: images on a grid
(6 pose variables each) coupled with every image within ``--radius`` grid steps, all sharing one
camera (``--intrinsics`` variables coupled with every image), random values made positive definite
by diagonal dominance. Prints, per size, the time of one factorisation + solve (best of
``--repeat``) of each method and the ratios against SuperLU.

    PYTHONPATH=. python benchmarks/ba_cholesky.py [--images 200,1000,3000] [--threads 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see ba_bal.py

import numpy as np  # noqa: E402
import scipy.sparse  # noqa: E402
import scipy.sparse.linalg  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ba_jacobians import best_time  # noqa: E402
from recon.ba.cholesky import SymbolicCholesky  # noqa: E402

DENSE_MAX_ROWS = 6000  # dense Cholesky beyond this takes longer than the rest together


def survey_pattern(nx: int, ny: int, intrinsics: int, radius: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(node_of_var, rows, cols)`` of the Schur complement of an nx x ny grid of images (6
    variables each) coupled with the images within ``radius`` steps (Chebyshev), all sharing one
    camera of ``intrinsics`` variables. Each symmetric pair of entries is listed once (an
    off-diagonal block whole, a diagonal block by its lower triangle), as
    :class:`~recon.ba.cholesky.SymbolicCholesky` takes them."""
    images = nx * ny
    sizes = np.array([6] * images + ([intrinsics] if intrinsics else []))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    i, j = np.divmod(np.arange(images), ny)
    steps = [(di, dj) for di in range(0, radius + 1) for dj in range(-radius, radius + 1) if (di, dj) > (0, 0)]
    pairs = [np.stack([np.arange(len(sizes))] * 2, 1)]
    for di, dj in steps:
        ok = (i + di < nx) & (j + dj >= 0) & (j + dj < ny)
        pairs.append(np.stack([np.flatnonzero(ok), np.flatnonzero(ok) + di * ny + dj], 1))
    if intrinsics:
        pairs.append(np.stack([np.arange(images), np.full(images, images)], 1))
    a, b = np.concatenate(pairs).T
    rows, cols = [], []
    for size_a in np.unique(sizes):
        for size_b in np.unique(sizes):
            sel = (sizes[a] == size_a) & (sizes[b] == size_b)
            r = starts[a[sel], None, None] + np.arange(size_a)[:, None]
            c = starts[b[sel], None, None] + np.arange(size_b)[None, :]
            r, c = np.broadcast_arrays(r, c)
            keep = (r >= c) | (a[sel] != b[sel])[:, None, None]
            rows.append(r[keep])
            cols.append(c[keep])
    return np.repeat(np.arange(len(sizes)), sizes), np.concatenate(rows), np.concatenate(cols)


def diagonally_dominant_values(rows: np.ndarray, cols: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random off-diagonal values and a diagonal that makes the matrix strictly diagonally
    dominant, hence positive definite (Gershgorin): ``(values (E,), diagonal (n,))``."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(rows.size, generator=gen, dtype=torch.float64)
    values[torch.from_numpy(rows == cols)] = 0.0
    n = int(max(rows.max(), cols.max())) + 1
    row_sums = torch.zeros(n, dtype=torch.float64).index_add_(0, torch.from_numpy(rows), values.abs())
    row_sums.index_add_(0, torch.from_numpy(cols), values.abs())
    return values, row_sums + 0.1


def scipy_matrix(rows: np.ndarray, cols: np.ndarray, values: torch.Tensor, diagonal: torch.Tensor) -> scipy.sparse.csc_matrix:
    """The symmetric matrix of the entries (each adds to (r, c) and (c, r), once when r == c)."""
    v = values.numpy()
    off = rows != cols
    n = diagonal.numel()
    return scipy.sparse.coo_matrix((np.concatenate([v, v[off], diagonal.numpy()]),
                                    (np.concatenate([rows, cols[off], np.arange(n)]),
                                     np.concatenate([cols, rows[off], np.arange(n)]))), shape=(n, n)).tocsc()


def run_size(images: int, intrinsics: int, radius: int, repeat: int) -> dict:
    nx = int(round(np.sqrt(images)))
    ny = images // nx
    node_of_var, rows, cols = survey_pattern(nx, ny, intrinsics, radius)
    values, diagonal = diagonally_dominant_values(rows, cols, seed=images)
    n = diagonal.numel()
    rhs = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cpu = torch.device("cpu")
    start = time.perf_counter()
    symbolic = SymbolicCholesky(node_of_var, rows, cols, cpu)
    symbolic_time = time.perf_counter() - start
    supernodal = best_time(lambda: symbolic.factorize(values, diagonal).solve(rhs), cpu, repeat)
    x = symbolic.factorize(values, diagonal).solve(rhs)
    s = scipy_matrix(rows, cols, values, diagonal)
    residual = float(np.abs(s @ x.numpy() - rhs.numpy()).max())
    order = symbolic.variable_at.numpy()
    s_ordered = s[order][:, order].tocsc()

    def superlu() -> np.ndarray:
        lu = scipy.sparse.linalg.splu(s_ordered, permc_spec="NATURAL", diag_pivot_thresh=0.0, options=dict(SymmetricMode=True))
        return lu.solve(rhs.numpy()[order])

    superlu_time = best_time(superlu, cpu, repeat)
    row = dict(images=nx * ny, rows=n, supernodes=symbolic.num_supernodes, factor_entries=symbolic.factor_entries,
               symbolic=symbolic_time, supernodal=supernodal, superlu=superlu_time, residual=residual)
    if n <= DENSE_MAX_ROWS:
        dense_s = torch.from_numpy(s.toarray())
        row["dense"] = best_time(lambda: torch.cholesky_solve(rhs[:, None], torch.linalg.cholesky(dense_s)), cpu, repeat)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="200,1000,3000", help="comma-separated image counts")
    parser.add_argument("--intrinsics", type=int, default=3, help="variables of the shared camera (0: none)")
    parser.add_argument("--radius", type=int, default=2, help="grid steps within which images share points")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = [run_size(int(k), args.intrinsics, args.radius, args.repeat) for k in args.images.split(",")]
    if args.json:
        print(json.dumps(dict(threads=args.threads, radius=args.radius, rows=table), indent=1))
        return
    print(f"factor + solve, best of {args.repeat}, {args.threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"{'images':>7} {'rows':>6} {'supernodes':>10} {'L entries':>10} {'symbolic s':>10} {'supernodal s':>12} "
          f"{'SuperLU s':>9} {'dense s':>8} {'superN/SuperLU':>14} {'dense/superN':>12} {'residual':>9}")
    for r in table:
        dense = f"{r['dense']:8.3f}" if "dense" in r else f"{'-':>8}"
        dense_ratio = f"{r['dense'] / r['supernodal']:12.2f}" if "dense" in r else f"{'-':>12}"
        print(f"{r['images']:7d} {r['rows']:6d} {r['supernodes']:10d} {r['factor_entries']:10d} {r['symbolic']:10.3f} "
              f"{r['supernodal']:12.3f} {r['superlu']:9.3f} {dense} {r['supernodal'] / r['superlu']:14.2f} {dense_ratio} "
              f"{r['residual']:9.1e}")


if __name__ == "__main__":
    main()
