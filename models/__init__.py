"""maskforge models package."""
