"""maskforge eval package."""
