"""maskforge.eval, benchmark protocols: dataset adapters, folds, episodes, metrics, seeds, the toy world and oracle."""
