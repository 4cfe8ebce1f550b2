"""RunWriter: shard roll-over, tar members, manifest = shard members, marker, byte-identical reruns, aborts."""

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskforge.storage.codec import ShardKeyError, ShardSample, encode_sample
from maskforge.storage.manifest import MANIFEST_SCHEMA, ManifestError
from maskforge.storage.shards import RunExistsError, RunWriter, write_config


def meta_for(i: int) -> dict:
    """Metadata with every manifest field, varied by i."""
    return {
        "dataset": "toy",
        "fold": 1,
        "class_id": 7 if i % 2 else 12,
        "class_name": "red square" if i % 2 else "green triangle",
        "source": "real",
        "mask_method": "gt",
        "seed": 1000 + i,
        "shot_ids": [f"img{i:03d}", "img999"],
        "scores": {"clip": 0.5 + i / 100, "area": float(i)},
        "config_hash": "cafe1234",
        "extra_info": [i, "x"],
    }


def make_sample(i: int, same_image: bool = False) -> ShardSample:
    """A 16x20 sample keyed fold1/cNNNN/real-IIII; same_image=True gives identical payload sizes."""
    rng = np.random.default_rng(0 if same_image else i)
    image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    label = np.zeros((16, 20), dtype=np.int32)
    label[3:9, 4:12] = 7 if i % 2 else 12
    label[14:, :] = -1
    meta = meta_for(0 if same_image else i)
    return ShardSample(f"fold1/c{meta['class_id']:04d}/real-{i:04d}", image, label, meta)


def write_run(run, n: int, **kw) -> dict:
    """Write n samples into run and finish it; return the marker."""
    with RunWriter(str(run), **kw) as writer:
        for i in range(n):
            writer.write(make_sample(i, same_image=kw.get("max_bytes") is not None))
        return writer.finish({"n": n, "note": "test"})


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_roll_over_by_count_and_tar_members(tmp_path):
    marker = write_run(tmp_path / "run", 7, max_count=3)
    shards = sorted((tmp_path / "run" / "shards").glob("*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [len(tar_members(p)) // 3 for p in shards] == [3, 3, 1]
    assert [s["count"] for s in marker["shards"]] == [3, 3, 1]
    key = make_sample(0).key
    assert tar_members(shards[0])[:3] == [f"{key}.jpg", f"{key}.json", f"{key}.mask.png"]
    with tarfile.open(shards[0]) as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_roll_over_by_bytes_uses_payload_size(tmp_path):
    fields = encode_sample(make_sample(0, same_image=True))
    payload = sum(len(v) for k, v in fields.items() if k != "__key__")
    # ShardWriter closes a shard before a write once its payload reached max_bytes: 2 samples reach 2*payload.
    marker = write_run(tmp_path / "run", 7, max_count=100, max_bytes=2 * payload)
    assert [s["count"] for s in marker["shards"]] == [2, 2, 2, 1]
    marker = write_run(tmp_path / "run2", 7, max_count=100, max_bytes=2 * payload + 1)
    assert [s["count"] for s in marker["shards"]] == [3, 3, 1]


def test_manifest_rows_equal_shard_members(tmp_path):
    run = tmp_path / "run"
    write_run(run, 5, max_count=2)
    table = pq.read_table(run / "manifest.parquet")
    assert table.schema.equals(MANIFEST_SCHEMA)
    members = {}
    for shard in sorted((run / "shards").glob("*.tar")):
        for name in tar_members(shard):
            key, field = name.split(".", 1)
            members.setdefault(key, set()).add((shard.name, field))
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [make_sample(i).key for i in range(5)]
    assert {r["key"] for r in rows} == set(members)
    for row in rows:
        assert members[row["key"]] == {(row["shard"], "jpg"), (row["shard"], "json"), (row["shard"], "mask.png")}
    first = rows[1]
    assert first["class_id"] == 7 and first["class_name"] == "red square" and first["seed"] == 1001
    assert first["shot_ids"] == ["img001", "img999"]
    assert dict(first["scores"]) == {"area": 1.0, "clip": 0.51}
    assert (first["width"], first["height"], first["config_hash"]) == (20, 16, "cafe1234")


def test_marker_records_hashes_sizes_and_is_written_last(tmp_path):
    run = tmp_path / "run"
    write_config(str(run), {"run": {"name": "t"}, "b": [1, 2]})
    marker = write_run(run, 4, max_count=3)
    on_disk = json.loads((run / "_COMPLETE.json").read_text())
    assert on_disk == marker
    assert marker["n_samples"] == 4 and marker["summary"] == {"n": 4, "note": "test"}
    assert marker["manifest_sha256"] == hashlib.sha256((run / "manifest.parquet").read_bytes()).hexdigest()
    assert marker["config_sha256"] == hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()
    for entry in marker["shards"]:
        data = (run / "shards" / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert json.loads((run / "summary.json").read_text()) == {"n": 4, "note": "test"}
    assert (run / "config.yaml").read_text() == "b:\n- 1\n- 2\nrun:\n  name: t\n"
    assert sorted(p.name for p in run.iterdir()) == [
        "_COMPLETE.json",
        "config.yaml",
        "manifest.parquet",
        "shards",
        "summary.json",
    ]


def test_reruns_into_two_folders_are_byte_identical(tmp_path):
    def files(run: Path) -> dict[str, bytes]:
        return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    for name in ("a", "b"):
        write_config(str(tmp_path / name), {"seed": 5})
        write_run(tmp_path / name, 5, max_count=2)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert len(files(tmp_path / "a")) == 7  # 3 shards, manifest, summary, marker, config


def test_a_complete_run_is_never_overwritten(tmp_path):
    run = tmp_path / "run"
    write_run(run, 2)
    before = (run / "_COMPLETE.json").read_bytes()
    with pytest.raises(RunExistsError, match=str(run)):
        RunWriter(str(run))
    with pytest.raises(RunExistsError, match=str(run)):
        write_config(str(run), {"x": 1})
    assert (run / "_COMPLETE.json").read_bytes() == before


def test_write_checks_keys_duplicates_and_meta(tmp_path):
    with RunWriter(str(tmp_path / "run")) as writer:
        writer.write(make_sample(0))
        with pytest.raises(ValueError, match="duplicate sample key 'fold1/c0012/real-0000'"):
            writer.write(make_sample(0))
        dotted = make_sample(1)
        dotted.key = "fold1/img_0.5"
        with pytest.raises(ShardKeyError, match="img_0.5"):
            writer.write(dotted)
        missing = make_sample(2)
        del missing.meta["scores"], missing.meta["seed"]
        with pytest.raises(ManifestError, match=r"real-0002.*\['seed', 'scores'\]"):
            writer.write(missing)
        bad_score = make_sample(3)
        bad_score.meta["scores"] = {"clip": "high"}
        with pytest.raises(ManifestError, match="'clip': 'high'"):
            writer.write(bad_score)
        bad_shots = make_sample(4)
        bad_shots.meta["shot_ids"] = [1, 2]
        with pytest.raises(ManifestError, match="shot_ids"):
            writer.write(bad_shots)
        marker = writer.finish({})
    assert marker["n_samples"] == 1


def test_exception_inside_with_leaves_no_marker_and_no_staging(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with RunWriter(str(run), max_count=2) as writer:
            for i in range(5):
                writer.write(make_sample(i))
            raise RuntimeError("boom")
    assert not (run / "_COMPLETE.json").exists() and not (run / "manifest.parquet").exists()
    assert not (run / ".staging").exists()
    # the two closed shards were published; the open third one (1 sample) was discarded
    assert sorted(p.name for p in (run / "shards").iterdir()) == ["shard-000000.tar", "shard-000001.tar"]


def test_leaving_with_without_finish_is_an_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="without finish"):
        with RunWriter(str(run)) as writer:
            writer.write(make_sample(0))
    assert not (run / "_COMPLETE.json").exists()


def test_restart_clears_shards_of_an_unfinished_attempt(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with RunWriter(str(run), max_count=1) as writer:
            for i in range(4):
                writer.write(make_sample(i))
            raise RuntimeError("interrupted")
    assert len(list((run / "shards").iterdir())) == 3
    marker = write_run(run, 1, max_count=1)
    assert [p.name for p in (run / "shards").iterdir()] == ["shard-000000.tar"]
    assert marker["n_samples"] == 1


def test_empty_run_has_no_shards(tmp_path):
    marker = write_run(tmp_path / "run", 0)
    assert marker["n_samples"] == 0 and marker["shards"] == []
    assert pq.read_table(tmp_path / "run" / "manifest.parquet").num_rows == 0


def test_memory_filesystem_run(tmp_path):
    import fsspec

    url = f"memory://{tmp_path.name}/run"
    write_config(url, {"a": 1})
    marker = write_run(url, 3, max_count=2)
    fs = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"/{tmp_path.name}/run/shards", detail=False))
    assert names == ["shard-000000.tar", "shard-000001.tar"]
    assert json.loads(fs.cat_file(f"/{tmp_path.name}/run/_COMPLETE.json")) == marker
    fs.rm(f"/{tmp_path.name}", recursive=True)


def test_manifest_bytes_are_deterministic_and_schema_is_fixed():
    from maskforge.storage.manifest import manifest_row, rows_to_table, table_to_bytes

    rows = [manifest_row(f"k{i}", "shard-000000.tar", meta_for(i), 20, 16) for i in range(3)]
    reordered = [dict(r, scores=list(reversed(r["scores"]))) for r in rows]
    assert table_to_bytes(rows_to_table(rows)) == table_to_bytes(rows_to_table(rows))
    # scores are sorted when the row is made, so insertion order of the scores dict does not matter
    shuffled = meta_for(1) | {"scores": dict(reversed(list(meta_for(1)["scores"].items())))}
    assert manifest_row("k1", "s", shuffled, 1, 1)["scores"] == manifest_row("k1", "s", meta_for(1), 1, 1)["scores"]
    assert rows_to_table(reordered).schema == MANIFEST_SCHEMA
    assert MANIFEST_SCHEMA.field("scores").type == pa.map_(pa.string(), pa.float64())
    assert MANIFEST_SCHEMA.field("shot_ids").type == pa.list_(pa.string())


def test_marked_folder_is_written_whole_and_verified(tmp_path):
    from pathlib import Path

    from maskforge.storage.marked_folder import MarkedFolderError, read_marked_folder, write_marked_folder

    out = tmp_path / "stage"
    writers = {"a.txt": lambda p: Path(p).write_text("a"), "sub/b.bin": lambda p: Path(p).write_bytes(b"\0b")}
    write_marked_folder(str(out), writers, {"note": 1})
    meta = read_marked_folder(out, required=("a.txt", "sub/b.bin"))
    assert meta["note"] == 1 and set(meta["files"]) == {"a.txt", "sub/b.bin"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no temporary folder left
    (out / "sub/b.bin").write_bytes(b"\0c")
    with pytest.raises(MarkedFolderError, match="b.bin: does not match its sha256"):
        read_marked_folder(out)
    with pytest.raises(MarkedFolderError, match=r"does not list \['c.txt'\]"):
        read_marked_folder(out, required=("c.txt",), verify=False)
    with pytest.raises(MarkedFolderError, match="may not use the key 'files'"):
        write_marked_folder(str(tmp_path / "x"), writers, {"files": {}})

    def fail(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_marked_folder(str(tmp_path / "y"), {"a.txt": fail}, {})
    assert not (tmp_path / "y").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
