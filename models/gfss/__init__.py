"""GFSS network: DeepLabV3 with a cosine classifier (GAPS), its checkpoints and the authors' key layout."""
