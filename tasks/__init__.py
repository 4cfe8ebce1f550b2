"""maskforge.tasks: stage functions (plain, testable without Prefect) and their Prefect task wrappers
(`wrappers.py`)."""
