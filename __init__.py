"""maskforge: offline synthetic data for few-shot segmentation, orchestrated with Prefect.

The repository root is this package (setuptools maps it to `maskforge`). Its subpackages form layers, each importing
only those below it: flows -> tasks -> models -> eval -> storage (see docs/layout.md).
"""
