"""The generation flow end to end under Prefect's test harness: outputs, determinism and idempotence."""

import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from maskforge.flows.generate import generate
from maskforge.storage.reader import RunReader
from maskforge.tasks.config import parse_config

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]


def tiny_config(out_dir: Path, **generation) -> dict:
    """A small toy run: 2 novel classes of fold 1, 3 samples each, shards of at most 2 samples."""
    return parse_config(
        {
            "run": {"name": "tiny", "seed": 5, "out_dir": str(out_dir)},
            "dataset": {"name": "toy", "fold": 1, "toy": {"image_size": 48, "n_train": 60, "n_val": 8}},
            "shots": {"k": 2},
            "base": {"subset_size": 20},
            "generation": {"samples_per_class": 3, "classes": ["blue square", "yellow triangle"], **generation},
            "shards": {"max_count": 2},
        }
    ).resolved()


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_generate_writes_a_complete_reproducible_run(tmp_path):
    config = tiny_config(tmp_path / "a")
    result = generate(config=config)
    run = Path(result["url"])
    assert run.parent == tmp_path / "a" and run.name.startswith("tiny-")
    reader = RunReader(str(run))
    summary = reader.summary
    assert summary["n_samples"] == 6
    assert summary["samples_per_class"] == {"blue square": {"real": 3}, "yellow triangle": {"real": 3}}
    assert all(len(shots) == 2 for shots in summary["shots"].values())
    # the resolved config is stored with the run, without its location (a moved run's config stays true)
    assert reader.config == {**config, "run": {k: v for k, v in config["run"].items() if k != "out_dir"}}

    # manifest rows equal shard members, and plain tar lists the members
    manifest = pq.read_table(run / "manifest.parquet").to_pylist()
    members = {}
    for shard in sorted((run / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                members.setdefault(name.split(".", 1)[0], set()).add((shard.name, name.split(".", 1)[1]))
    assert {r["key"] for r in manifest} == set(members)
    for row in manifest:
        assert members[row["key"]] == {(row["shard"], "jpg"), (row["shard"], "json"), (row["shard"], "mask.png")}
    assert not (run / "parts").exists()

    # every sample: the novel class is present, labels hold only the novel class and base classes
    for sample in reader:
        cid = sample.meta["class_id"]
        assert cid in (7, 12) and (sample.label == cid).any()
        assert set(np.unique(sample.label)) - {0, -1, cid} <= set(sample.meta["base_classes"])
        assert not set(np.unique(sample.label)) & ({2, 7, 12, 13} - {cid})
        assert sample.meta["source"] == "real" and sample.meta["mask_method"] == "gt"
        assert set(sample.meta["shot_ids"]) <= set(summary["shots"][sample.meta["class_name"]])

    # a second run elsewhere is byte for byte the same; a rerun in place is recognised as complete
    again = Path(generate(config=tiny_config(tmp_path / "b"))["url"])
    first, second = _files(run), _files(again)
    # every file is byte-identical, config.yaml and the marker included (the stored config has no out_dir)
    assert first == second and any(name.startswith("shards/") for name in first) and "_COMPLETE.json" in first
    before = _files(run)
    assert generate(config=config) == {"url": str(run), "complete": True}
    assert _files(run) == before
