"""Supernodal sparse Cholesky factorisation in torch, for the reduced camera system of BA.

The Schur complement of a large bundle adjustment is sparse (an image couples only with the
images it shares points with) but made of dense blocks (6 pose entries per image, the intrinsics
of a camera). A general-purpose sparse LU (SuperLU, which recon.ba used before) works on it
entry by entry; this factorisation works on dense blocks instead, so almost all of its arithmetic
is dense Cholesky, triangular solves and matrix products (BLAS on the CPU, cuBLAS/cuSOLVER on a
GPU). ``benchmarks/ba_cholesky.py`` compares the two (and dense Cholesky) on survey patterns.

It is the multifrontal method (Duff and Reid; Liu, "The multifrontal method for sparse matrix
solution", SIAM Review 1992), with supernodes over groups of variables ("nodes": an image's pose,
a camera's intrinsics):

1. Symbolic analysis, once per sparsity pattern (:class:`SymbolicCholesky`): METIS nested
   dissection orders the node graph, the elimination tree and the row structure of L follow at
   node level, the tree is postordered, and chains of nodes are merged into supernodes (exactly
   when their structures nest, and "relaxed" with a few explicit zeros when that gives larger dense
   blocks, with CHOLMOD's default limits). Every matrix entry is mapped to its place in the panel
   of its supernode, and every supernode's update rows to their place in its parent's front.
2. Numeric factorisation, per matrix (:meth:`SymbolicCholesky.factorize`): in postorder, each
   supernode's front (its panel plus its children's update matrices, "extend-add") gives
   L11 = chol(F11), L21 = F21 L11^-T and the update F22 - L21 L21^T passed to its parent.
3. Solves (:meth:`CholeskyFactor.solve`): forward and backward substitution supernode by supernode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymetis
import scipy.sparse
import torch

Tensor = torch.Tensor

# Relaxed supernode amalgamation, CHOLMOD's default limits (nrelax, zrelax): a merged supernode of
# at most RELAX_COLUMNS[i] columns may hold up to RELAX_ZEROS[i] explicit zeros (as a fraction of
# its entries), a larger one up to RELAX_ZEROS[-1].
RELAX_COLUMNS = (4, 16, 48)
RELAX_ZEROS = (0.8, 0.1, 0.05)
# Updates of at least this many rows are computed as UPDATE_BLOCKS row blocks (lower_update).
BLOCKED_UPDATE_MIN_ROWS = 256
UPDATE_BLOCKS = 4


def node_graph(num_nodes: int, node_a: np.ndarray, node_b: np.ndarray) -> scipy.sparse.csr_matrix:
    """Symmetric adjacency (CSR, sorted, no self-loops) of nodes linked by any entry (node_a[e],
    node_b[e]); duplicates merge (a compressed sparse conversion, not a sort of the entries)."""
    ones = np.ones(node_a.size, dtype=np.int8)
    graph = scipy.sparse.coo_matrix((ones, (node_a, node_b)), shape=(num_nodes, num_nodes))
    graph = (graph.tocsr() + graph.T.tocsr()).tocsr()
    graph.setdiag(0)
    graph.eliminate_zeros()
    graph.sort_indices()
    return graph


def nested_dissection(graph: scipy.sparse.csr_matrix) -> np.ndarray:
    """(N,) elimination order of the nodes of an undirected graph: METIS nested dissection, which
    on the grid-like camera graphs of surveys fills L less than minimum degree orders."""
    if graph.shape[0] < 3 or graph.nnz == 0:
        return np.arange(graph.shape[0])
    return np.asarray(pymetis.nested_dissection(pymetis.CSRAdjacency(graph.indptr, graph.indices))[0])


def elimination_structure(higher: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Elimination tree and row structure of L at node level, the nodes already in elimination
    order; ``higher[j]`` are the neighbours of node j eliminated after it.

    The structure of node j is its later neighbours plus its children's structures less j
    (Liu 1990); its parent is the first node of that structure. Returns ``(parent, structure)``:
    parent (N,) (-1 for roots) and the sorted structure of each node.
    """
    n = len(higher)
    parent = np.full(n, -1, dtype=np.int64)
    pending: list[list[np.ndarray]] = [[] for _ in range(n)]
    structure = []
    for j in range(n):
        parts = pending[j]
        rows = np.unique(np.concatenate([higher[j], *parts])) if parts else higher[j]
        if parts:
            rows = rows[rows != j]
        pending[j] = []
        structure.append(rows)
        if rows.size:
            parent[j] = rows[0]
            pending[rows[0]].append(rows)
    return parent, structure


def postorder(parent: np.ndarray) -> np.ndarray:
    """(N,) postorder of a forest (children before parents, each subtree contiguous): the new
    position order[k] is the old node eliminated k-th. Equivalent to the original order in fill,
    and it makes chains of the tree consecutive, so they can become supernodes."""
    n = parent.size
    children: list[list[int]] = [[] for _ in range(n)]
    for j in range(n - 1, -1, -1):
        if parent[j] >= 0:
            children[parent[j]].append(j)
    order = []
    for root in np.flatnonzero(parent < 0):
        stack = [int(root)]
        while stack:
            node = stack[-1]
            if children[node]:
                stack.append(children[node].pop())
            else:
                order.append(stack.pop())
    return np.asarray(order, dtype=np.int64)


def allowed_zeros(columns: int) -> float:
    """The share of explicit zeros a relaxed supernode of ``columns`` columns may hold."""
    return next((z for c, z in zip(RELAX_COLUMNS, RELAX_ZEROS) if columns <= c), RELAX_ZEROS[-1])


def supernode_starts(parent: np.ndarray, structure: list[np.ndarray], node_size: np.ndarray) -> np.ndarray:
    """First node of each supernode (postordered nodes): node k joins the supernode of k - 1 when
    k is k - 1's parent and the merge adds few enough explicit zeros (:func:`allowed_zeros`)."""
    row_size = [int(node_size[rows].sum()) for rows in structure]
    starts = [0]
    columns, zeros = int(node_size[0]), 0
    for k in range(1, parent.size):
        size = int(node_size[k])
        if parent[k - 1] == k:
            # The supernode's columns gain the rows of k's structure that k - 1's lacked.
            new_zeros = zeros + columns * (row_size[k] + size - row_size[k - 1])
            new_columns = columns + size
            entries = new_columns * (new_columns + 1) // 2 + new_columns * row_size[k]
            if new_zeros <= allowed_zeros(new_columns) * entries:
                columns, zeros = new_columns, new_zeros
                continue
        starts.append(k)
        columns, zeros = size, 0
    return np.asarray(starts, dtype=np.int64)


@dataclass
class CholeskyFactor:
    """L of S = L L^T, supernode by supernode: the dense diagonal block L11 (nc, nc) and the
    rows below it L21 (nb, nc), with the positions of those rows."""

    symbolic: "SymbolicCholesky"
    diagonal_blocks: list[Tensor]
    below_blocks: list[Tensor]

    def solve(self, rhs: Tensor) -> Tensor:
        """x with S x = rhs, both (n,) in the variable order the symbolic analysis was given."""
        sym = self.symbolic
        y = rhs.index_select(0, sym.variable_at)
        self._substitute(y)
        return torch.empty_like(y).index_copy_(0, sym.variable_at, y)

    def _substitute(self, y: Tensor) -> None:
        """L L^T x = y in place, y in the factor's variable order."""
        sym = self.symbolic
        supernodes = list(zip(sym.column_ranges, sym.below_rows, self.diagonal_blocks, self.below_blocks))
        for (c0, c1), below, l11, l21 in supernodes:
            z = torch.linalg.solve_triangular(l11, y[c0:c1, None], upper=False)
            y[c0:c1] = z[:, 0]
            if below is not None:
                y.index_add_(0, below, l21 @ z[:, 0], alpha=-1.0)
        for (c0, c1), below, l11, l21 in reversed(supernodes):
            z = y[c0:c1]
            if below is not None:
                z = z - l21.T @ y.index_select(0, below)
            y[c0:c1] = torch.linalg.solve_triangular(l11.T, z[:, None], upper=True)[:, 0]


class SymbolicCholesky:
    """Ordering, supernodes and index maps of a symmetric sparsity pattern, built once and used to
    factor any matrix with that pattern (:meth:`factorize`).

    The pattern is given as the entries that will be summed into the matrix: ``rows[e]``,
    ``cols[e]`` (variables 0..n-1). Entry e adds its value to both S[rows[e], cols[e]] and
    S[cols[e], rows[e]] (once if they coincide): give each symmetric pair of a contribution once,
    and a contribution to a diagonal entry from an off-diagonal block twice. ``node_of_var`` (n,)
    groups variables into nodes (blocks treated as dense: a pose, the intrinsics of a camera).
    """

    def __init__(self, node_of_var: np.ndarray, rows: np.ndarray, cols: np.ndarray, device: torch.device):
        n = node_of_var.size
        if n == 0:
            raise ValueError("SymbolicCholesky needs at least one variable")
        self.size, self.device = n, device
        nodes, node_of_var = np.unique(node_of_var, return_inverse=True)
        num_nodes = nodes.size
        graph = node_graph(num_nodes, node_of_var[rows], node_of_var[cols])
        # Node level: order, elimination tree, structure; then postorder.
        metis_order = nested_dissection(graph)
        rank = np.empty(num_nodes, dtype=np.int64)
        rank[metis_order] = np.arange(num_nodes)
        parent, structure = elimination_structure(later_neighbours(graph, rank))
        post = postorder(parent)
        new_of_old = np.empty(num_nodes, dtype=np.int64)
        new_of_old[post] = np.arange(num_nodes)
        parent = np.where(parent[post] >= 0, new_of_old[parent[post]], -1)
        structure = [np.sort(new_of_old[structure[j]]) for j in post]
        node_rank = new_of_old[rank]  # original compact node -> postorder position
        node_size = np.bincount(node_rank[node_of_var], minlength=num_nodes)
        # Variable positions: nodes in postorder, each node's variables contiguous (in given order).
        node_offset = np.concatenate([[0], np.cumsum(node_size)])
        var_node = node_rank[node_of_var]
        by_position = np.lexsort((np.arange(n), var_node))
        position = np.empty(n, dtype=np.int64)
        position[by_position] = np.arange(n)
        self.variable_at = torch.as_tensor(by_position, device=device)  # position -> variable
        self._build_supernodes(parent, structure, node_size, node_offset)
        self._map_entries(position[rows], position[cols])
        self._map_diagonal(position)

    def _build_supernodes(self, parent: np.ndarray, structure: list[np.ndarray], node_size: np.ndarray,
                          node_offset: np.ndarray) -> None:
        starts = supernode_starts(parent, structure, node_size)
        ends = np.append(starts[1:], parent.size)
        tops = ends - 1
        supernode_of_node = np.repeat(np.arange(starts.size), ends - starts)
        self.column_ranges = [(int(node_offset[a]), int(node_offset[e])) for a, e in zip(starts, ends)]
        below = [np.concatenate([np.arange(node_offset[j], node_offset[j + 1]) for j in structure[t]]).astype(np.int64)
                 if structure[t].size else np.zeros(0, dtype=np.int64) for t in tops]
        self.fronts = [np.concatenate([np.arange(c0, c1), rows]) for (c0, c1), rows in zip(self.column_ranges, below)]
        self.parent = [int(supernode_of_node[parent[t]]) if parent[t] >= 0 else -1 for t in tops]
        self.children: list[list[int]] = [[] for _ in tops]
        for s, p in enumerate(self.parent):
            if p >= 0:
                self.children[p].append(s)
        dev = self.device
        self.below_rows = [torch.as_tensor(rows, device=dev) if rows.size else None for rows in below]
        # Extend-add: where each update row lands in the parent's front, and its runs of
        # consecutive rows there (local start, local end, front position).
        into_parent = [np.searchsorted(self.fronts[p], rows) if p >= 0 else None for rows, p in zip(below, self.parent)]
        self.into_parent = [torch.as_tensor(at, device=dev) if at is not None else None for at in into_parent]
        self.update_runs = [consecutive_runs(at) if at is not None else [] for at in into_parent]
        self.column_starts = np.asarray([c0 for c0, _ in self.column_ranges], dtype=np.int64)
        self.widths = widths = np.asarray([c1 - c0 for c0, c1 in self.column_ranges], dtype=np.int64)
        heights = np.asarray([f.size for f in self.fronts], dtype=np.int64)
        self.panel_offset = np.concatenate([[0], np.cumsum(widths * heights)])
        self.storage_size = int(self.panel_offset[-1])
        self.supernode_of_position = np.repeat(np.arange(starts.size), widths)
        self.front_keys = np.concatenate([s * self.size + f for s, f in enumerate(self.fronts)])
        self.front_start = np.concatenate([[0], np.cumsum(heights)])

    def _panel_index(self, row_pos: np.ndarray, col_pos: np.ndarray) -> np.ndarray:
        """Storage index of lower-triangle entries (row_pos >= col_pos): row-major in the
        (front height, width) panel of the column's supernode."""
        s = self.supernode_of_position[col_pos]
        local_row = np.searchsorted(self.front_keys, s * self.size + row_pos) - self.front_start[s]
        return self.panel_offset[s] + local_row * self.widths[s] + col_pos - self.column_starts[s]

    def _map_entries(self, row_pos: np.ndarray, col_pos: np.ndarray) -> None:
        self.entry_target = torch.as_tensor(
            self._panel_index(np.maximum(row_pos, col_pos), np.minimum(row_pos, col_pos)), device=self.device)

    def _map_diagonal(self, position: np.ndarray) -> None:
        self.diagonal_target = torch.as_tensor(self._panel_index(position, position), device=self.device)

    @property
    def num_supernodes(self) -> int:
        return len(self.column_ranges)

    @property
    def factor_entries(self) -> int:
        """Stored entries of L (the lower triangles of the diagonal blocks and the rows below)."""
        return int(sum((c1 - c0) * (c1 - c0 + 1) // 2 + (c1 - c0) * (f.size - c1 + c0)
                       for (c0, c1), f in zip(self.column_ranges, self.fronts)))

    def factorize(self, values: Tensor, diagonal: Tensor) -> CholeskyFactor | None:
        """Factor S = (sum of the pattern's entries with ``values`` (E,)) + diag(``diagonal``) (n,);
        None if S is not positive definite."""
        storage = torch.zeros(self.storage_size, dtype=values.dtype, device=values.device)
        storage.index_add_(0, self.entry_target, values).index_add_(0, self.diagonal_target, diagonal)
        updates: dict[int, Tensor] = {}
        diagonal_blocks, below_blocks, failures = [], [], []
        for s, ((c0, c1), front_rows) in enumerate(zip(self.column_ranges, self.fronts)):
            width, height = c1 - c0, front_rows.size
            front = storage[self.panel_offset[s]:self.panel_offset[s + 1]].view(height, width)
            if height > width:
                front = torch.cat([front, front.new_zeros(height, height - width)], 1)
            for child in self.children[s]:
                extend_add(front, self.into_parent[child], updates.pop(child), self.update_runs[child])
            l11, info = torch.linalg.cholesky_ex(front[:width, :width])
            l21 = torch.linalg.solve_triangular(l11.mT, front[width:, :width], upper=True, left=False)
            if height > width:
                updates[s] = lower_update(front[width:, width:], l21)
            failures.append(info)
            diagonal_blocks.append(l11)
            below_blocks.append(l21)
        if bool(torch.stack(failures).any()):
            return None
        return CholeskyFactor(self, diagonal_blocks, below_blocks)


def lower_update(block: Tensor, below: Tensor) -> Tensor:
    """``block - below below^T`` on and below the diagonal, in place; returns ``block``.

    Nothing reads the entries above the diagonal of a front or an update (Cholesky, the
    triangular solve and the extend-add into lower triangles use the lower ones), so they are left
    stale. A large update is computed as :data:`UPDATE_BLOCKS` row blocks, each only up to the
    diagonal: 10/16 of the multiply-adds of the full product, which is most of the factorisation's
    arithmetic.
    """
    rows = below.shape[0]
    step = -(-rows // UPDATE_BLOCKS) if rows >= BLOCKED_UPDATE_MIN_ROWS else rows
    for lo in range(0, rows, step):
        hi = min(lo + step, rows)
        block[lo:hi, :hi].addmm_(below[lo:hi], below[:hi].mT, alpha=-1.0)
    return block


def extend_add(front: Tensor, at: Tensor, update: Tensor, runs: list[tuple[int, int, int]]) -> None:
    """front[at, at] += update on and below the diagonal.

    ``runs`` (l0, l1, c0): the update's columns l0..l1 land on the consecutive front columns
    c0..c0 + l1 - l0 (a child's rows are a few runs of its parent's: 13 per child on average on
    the 3,000-image survey). Per run, one row-indexed add of the rows from l0 down: contiguous row
    segments, and only the lower triangle. 6x faster than gathering whole front rows and
    scattering columns into them, which was most of the factorisation's time (ad hoc, one thread:
    a 778-row update with 24 runs into a 1,884-row front, 1.2 against 7.1 ms).
    """
    for l0, l1, c0 in runs:
        front[:, c0:c0 + l1 - l0].index_add_(0, at[l0:], update[l0:, l0:l1])


def consecutive_runs(positions: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of consecutive values in a sorted array: [(start index, end index, first value)]."""
    starts = np.flatnonzero(np.diff(positions, prepend=-2) != 1)
    ends = np.append(starts[1:], positions.size)
    return [(int(a), int(e), int(positions[a])) for a, e in zip(starts, ends)]


def later_neighbours(graph: scipy.sparse.csr_matrix, rank: np.ndarray) -> list[np.ndarray]:
    """Per node in elimination order (``rank``: node -> position), its neighbours eliminated
    after it, as positions."""
    permuted = graph[np.argsort(rank)][:, np.argsort(rank)]
    upper = scipy.sparse.triu(permuted, k=1).tocsr()
    upper.sort_indices()
    return np.split(upper.indices.astype(np.int64), upper.indptr[1:-1])
