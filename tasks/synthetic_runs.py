"""Open a maskforge run as a learner's synthetic data: complete, verified, and of the learner's dataset."""

from __future__ import annotations

from maskforge.eval.datasets.config import DatasetConfig
from maskforge.storage.reader import RunIncompleteError, RunReader
from maskforge.storage.yaml_config import ConfigError


def open_synthetic_run(
    url: str, field: str, dataset: DatasetConfig, fold: bool = False, world: bool = False, verify_shards: bool = False
) -> RunReader:
    """Return a reader of the complete run `url` given as config field `field`; with `verify_shards`, every shard
    is hashed against the marker now (before workers that read unverified start), else each shard at its first read.

    A missing, incomplete or corrupt run, or a run of another dataset (with `fold`: another fold; with `world`:
    another toy world, see DatasetConfig.mismatch) is a ConfigError naming the field and the run: class ids mean
    other classes in another dataset, and a learner would otherwise train or evaluate on them without a word.
    """
    try:
        reader = RunReader(url)
        if verify_shards:
            reader.verify_shards()
    except RunIncompleteError as err:
        raise ConfigError(f"{field}: {err}") from None
    problem = dataset.mismatch((reader.config or {}).get("dataset"), fold=fold, world=world)
    if problem:
        raise ConfigError(f"{field}: {url} {problem}")
    return reader
