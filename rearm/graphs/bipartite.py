"""The user-item bipartite graph used by the heterography (LightGCN) propagation."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from rearm.graphs.sparse import as_binary_csr, to_torch


def bipartite_graph(train: sp.spmatrix) -> torch.Tensor:
    """Symmetrically normalised bipartite adjacency D^-1/2 A D^-1/2, A = [[0, R], [R^T, 0]].

    Args:
        train: binary interactions R, [num_users, num_items] (any nonzero counts as 1).

    Returns:
        float32 torch sparse CSR [(num_users + num_items), (num_users + num_items)]; users occupy
        rows 0..num_users-1, items follow. Nodes without train interactions get empty rows and
        columns (no division by zero).
    """
    r = as_binary_csr(train, "train")
    num_users, num_items = r.shape
    user_degree = np.diff(r.indptr).astype(np.float64)
    item_degree = np.bincount(r.indices, minlength=num_items).astype(np.float64)
    user_scale = np.zeros(num_users)
    item_scale = np.zeros(num_items)
    np.divide(1.0, np.sqrt(user_degree), out=user_scale, where=user_degree > 0)
    np.divide(1.0, np.sqrt(item_degree), out=item_scale, where=item_degree > 0)
    # Normalise R's values once; the lower block is the transpose of the same values.
    values = user_scale[np.repeat(np.arange(num_users), np.diff(r.indptr))] * item_scale[r.indices]
    upper = sp.csr_matrix((values.astype(np.float32), r.indices, r.indptr), shape=r.shape)
    adjacency = sp.bmat([[None, upper], [upper.T, None]], format="csr", dtype=np.float32)
    return to_torch(adjacency)
