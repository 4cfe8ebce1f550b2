"""maskforge tasks package."""
