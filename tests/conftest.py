"""Shared test setup: an isolated, offline Prefect home and one ephemeral Prefect API per test session."""

import os
import tempfile

# Before Prefect is imported anywhere: never touch ~/.prefect, never phone home, and wait long enough
# for the ephemeral API on a 2-core machine (measured ~30 s cold).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="maskforge-prefect-")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on two cores: one torch thread each, or they oversubscribe the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """Start Prefect's test harness once per session (a temporary database behind an ephemeral API)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


#: The files that take longest (each starts Prefect servers, workers or command processes and waits on them; measured
#: with --durations), run first: `make test` hands whole files to its workers in collection order
#: (--no-loadscope-reorder: xdist's default sorts files by test count, which put these last, one alone for minutes).
LONGEST_FIRST = (
    "test_signals.py",
    "test_signals_diffusion_learners.py",
    "test_cluster_s3.py",
    "test_reliability.py",
    "test_kill_rerun.py",
    "test_toy_models.py",
)


def pytest_collection_modifyitems(config, items):
    """Put the LONGEST_FIRST files first; skip tests marked gpu when no CUDA device is present."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Build the tiny SD, ControlNets and HED once per session (about 10 s); returns {name: folder}."""
    from maskforge.models.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"), seed=0)
