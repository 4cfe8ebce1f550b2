"""maskforge.tasks: stage functions (plain, testable without Prefect) and Prefect task wrappers (`wrappers.py`)."""
