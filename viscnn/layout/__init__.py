"""In-layer 2D node positions (the layer axis comes from the graph), as pure functions over arrays.

``mds``: nodes that matter for the same classes sit together. Each node's vector of per-class
importances is L2-normalised (so a node is placed by *which* classes it serves, not how much),
and each layer is embedded on its own with metric MDS (SMACOF started from classical MDS; landmark
MDS above :data:`LANDMARK_THRESHOLD` nodes keeps big layers affordable). ``pca``: the two principal
axes of the same vectors (= classical MDS). ``grid``: channel order on a square grid.

Every layer is centred and scaled to unit RMS radius. MDS and PCA layers are then rotated (and
possibly reflected) to shorten their important edges to earlier layers, so that wires between
adjacent layers run roughly straight. Input-image nodes get a small fixed arrangement.

Cost is bounded per layer (SMACOF on at most 1,000 points or :data:`N_LANDMARKS` landmarks, the
alignment on at most :data:`MAX_ALIGN_EDGES` links); big graphs stay fast because the n x n loops
run in place, layers are embedded in parallel threads, and the alignment's edge selection reads
each layer's kernels once without ``graph.links`` (ResNet-50 at 64x64, 20 classes: 155 s -> 12 s
for all three layouts on two cores). Results are bit-identical to the plain code except where
vectors are wide (over :data:`EIGH_MIN_DIM` classes): there to rounding.

Modules: :mod:`~viscnn.layout.mds` (embeddings of one layer's vectors), :mod:`~viscnn.layout.align`
(the rotation that shortens edges), :mod:`~viscnn.layout.layouts` (the named layouts of a whole graph).
"""

from viscnn.layout.align import (MAX_ALIGN_EDGES, _edges_into_layer, _edges_into_layer_from_links, align_layers,
                                 best_rotation, weighted_edge_length)
from viscnn.layout.layouts import (INPUT_RADIUS, LAYOUTS, MAX_WORKERS, class_mds_layout, compute_layout, grid_layout,
                                   grid_positions, input_positions, layout_names, normalize_positions,
                                   normalized_class_vectors, pca_layout)
from viscnn.layout.mds import (EIGH_MIN_DIM, LANDMARK_THRESHOLD, MAX_GRAM_NODES, N_LANDMARKS, _maxmin_landmarks,
                               classical_mds, kruskal_stress, landmark_mds, mds_embedding, metric_mds,
                               pairwise_distances, pca_2d, smacof)

__all__ = [
    "EIGH_MIN_DIM", "INPUT_RADIUS", "LANDMARK_THRESHOLD", "LAYOUTS", "MAX_ALIGN_EDGES", "MAX_GRAM_NODES", "MAX_WORKERS",
    "N_LANDMARKS", "_edges_into_layer", "_edges_into_layer_from_links", "_maxmin_landmarks", "align_layers",
    "best_rotation", "class_mds_layout", "classical_mds", "compute_layout", "grid_layout", "grid_positions",
    "input_positions", "kruskal_stress", "landmark_mds", "layout_names", "mds_embedding", "metric_mds",
    "normalize_positions", "normalized_class_vectors", "pairwise_distances", "pca_2d", "pca_layout", "smacof",
    "weighted_edge_length",
]
