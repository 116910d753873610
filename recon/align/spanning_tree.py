"""Maximum spanning trees of pair graphs: the chains along which global initialisations start."""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree


def max_spanning_tree(pairs: np.ndarray, weights: np.ndarray, num_nodes: int, root: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Breadth-first ``order`` from ``root`` and each node's ``parent`` (-1 for the root and for
    nodes not connected to it) in the maximum spanning tree of the graph with edges ``pairs``
    (E, 2) weighted by positive ``weights`` (E,); nodes outside the root's component are absent
    from ``order``."""
    cost = weights.max() + 1.0 - weights  # positive; the minimum tree of it is the maximum tree of weights
    graph = coo_matrix((cost, (pairs[:, 0], pairs[:, 1])), shape=(num_nodes, num_nodes)).tocsr()
    order, parent = breadth_first_order(minimum_spanning_tree(graph + graph.T), root, directed=False)
    return order.astype(np.int64), np.where(parent < 0, -1, parent).astype(np.int64)
