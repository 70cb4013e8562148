"""Artifact debugging (Alsallakh et al., "Debugging the internals of convolutional networks"):
baseline inputs, per-layer mean feature maps and their drill-down, mean input patch vs mean
kernel, a padding audit, and two input sizes or models side by side."""
