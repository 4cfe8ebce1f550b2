"""HSNet stages: episodic training on a fold's base classes, episodic evaluation, and their Prefect task wrappers."""
