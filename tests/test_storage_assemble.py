"""assemble_run: completed parts become one run (shards moved, manifests merged, marker last); bad parts are refused."""

import pytest
from test_storage_shards import make_sample

from maskforge.storage.assemble import assemble_run, is_complete
from maskforge.storage.reader import RunIncompleteError, RunReader
from maskforge.storage.shards import RunWriter, write_config


def write_part(url, indices, prefix):
    with RunWriter(str(url), max_count=2, shard_prefix=prefix) as writer:
        for i in indices:
            writer.write(make_sample(i))
        writer.finish({"part": prefix})


def test_parts_assemble_into_one_readable_run(tmp_path):
    run = tmp_path / "run"
    write_config(str(run), {"run": {"name": "x"}})
    write_part(run / "parts" / "a", [0, 2, 4], "c0012")
    write_part(run / "parts" / "b", [1, 3], "c0007")
    part_bytes = {p.name: p.read_bytes() for p in sorted((run / "parts").rglob("*.tar"))}
    marker = assemble_run(str(run), [str(run / "parts" / "a"), str(run / "parts" / "b")], {"n": 5})
    assert marker["n_samples"] == 5 and marker["summary"] == {"n": 5}
    assert [s["name"] for s in marker["shards"]] == ["c0012-000000.tar", "c0012-000001.tar", "c0007-000000.tar"]
    assert not (run / "parts").exists() and is_complete(str(run))
    assert {p.name: p.read_bytes() for p in (run / "shards").glob("*.tar")} == part_bytes  # moved, not rewritten
    reader = RunReader(str(run))
    assert [s.key for s in reader] == [make_sample(i).key for i in (0, 2, 4, 1, 3)]
    assert reader.get(make_sample(3).key).meta["seed"] == 1003


def test_an_unfinished_part_is_refused_and_no_marker_is_written(tmp_path):
    run = tmp_path / "run"
    write_part(run / "parts" / "a", [0], "c0012")
    with pytest.raises(RuntimeError):
        with RunWriter(str(run / "parts" / "b"), shard_prefix="c0007") as writer:
            writer.write(make_sample(1))
            raise RuntimeError("killed mid-class")
    with pytest.raises(RunIncompleteError, match="parts/b"):
        assemble_run(str(run), [str(run / "parts" / "a"), str(run / "parts" / "b")], {})
    assert not is_complete(str(run))
    with pytest.raises(RunIncompleteError):
        RunReader(str(run))


def test_clashing_shard_names_are_refused(tmp_path):
    run = tmp_path / "run"
    write_part(run / "parts" / "a", [0], "c0001")
    write_part(run / "parts" / "b", [1], "c0001")
    with pytest.raises(ValueError, match="share shard names"):
        assemble_run(str(run), [str(run / "parts" / "a"), str(run / "parts" / "b")], {})
    with pytest.raises(ValueError, match="no parts"):
        assemble_run(str(run), [], {})
