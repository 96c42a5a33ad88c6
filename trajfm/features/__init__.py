"""From cleaned trajectories to model tensors: per-point encodings, windows, splits, statistics."""
