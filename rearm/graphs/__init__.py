"""Where graphs are built: pure functions from interactions / features to float32 torch sparse
CSR graphs (the bipartite graph and REARM's four homographs), and `build_graphs`, which builds all
of them from a Dataset, optionally through the data layer's GraphCache."""

from rearm.graphs.bipartite import bipartite_graph
from rearm.graphs.build import (
    BUILDER_VERSION,
    GRAPH_FILES,
    Graphs,
    build_graphs,
    check_modality_weights,
    combine_modalities,
    homograph,
    modality_weights,
    save_graphs,
)
from rearm.graphs.cooccurrence import (
    cooccurrence_graph,
    item_cooccurrence_graph,
    user_cooccurrence_graph,
)
from rearm.graphs.similarity import (
    cold_item_graph,
    gram_matrix,
    knn_graph,
    knn_neighbours,
    neighbour_recall,
    sample_recall,
    user_interest,
    user_interest_graph,
    user_interest_neighbours,
)
from rearm.graphs.sparse import to_scipy, to_torch

__all__ = [
    "cold_item_graph",
    "BUILDER_VERSION",
    "GRAPH_FILES",
    "Graphs",
    "bipartite_graph",
    "build_graphs",
    "check_modality_weights",
    "combine_modalities",
    "cooccurrence_graph",
    "gram_matrix",
    "homograph",
    "item_cooccurrence_graph",
    "knn_graph",
    "knn_neighbours",
    "modality_weights",
    "neighbour_recall",
    "sample_recall",
    "save_graphs",
    "to_scipy",
    "to_torch",
    "user_cooccurrence_graph",
    "user_interest",
    "user_interest_graph",
    "user_interest_neighbours",
]
