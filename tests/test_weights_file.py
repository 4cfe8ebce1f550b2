"""Weight files with pickled code are refused everywhere with one line that names the file and the blocked global and
never repeats torch's advice to load unsafely (every reader goes through models/weights_file.py)."""

import os
from pathlib import Path

import pytest
import torch

from maskforge.models.diffews.checkpoint import DiffewsCheckpointError
from maskforge.models.diffews.checkpoint import _read_state as diffews_read_state
from maskforge.models.gfss.checkpoint import GfssCheckpointError, authors_key_report
from maskforge.models.hsnet.checkpoint import CheckpointError, read_state
from maskforge.models.maskdiff.detector import DetectorError
from maskforge.models.maskdiff.detector import _read_state as detector_read_state
from maskforge.models.weights_file import WeightsFileError, load_weights_only


class _Payload:
    """Pickles as a call of os.system: what a malicious .pt file holds."""

    def __reduce__(self):
        return (os.system, ("echo never-run",))


@pytest.fixture
def code_file(tmp_path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload()}, path)
    return path


READERS = {
    "hsnet": (lambda p: read_state(p), CheckpointError),
    "gfss": (lambda p: authors_key_report(str(p)), GfssCheckpointError),
    "maskdiff": (lambda p: detector_read_state(str(p)), DetectorError),
    "diffews": (lambda p: diffews_read_state(p, "eval.checkpoint"), DiffewsCheckpointError),
    "shared": (load_weights_only, WeightsFileError),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_pickled_code_is_refused_naming_the_file_and_the_global(reader, code_file, capfd):
    read, error = READERS[reader]
    with pytest.raises(error) as err:
        read(code_file)
    message = str(err.value)
    assert str(code_file) in message and "global posix.system" in message  # the blocked global, by name
    assert "maskforge never loads pickled code" in message and "\n" not in message
    assert "will likely succeed" not in message and "weights_only` set to `False`" not in message
    assert "never-run" not in capfd.readouterr().out  # the payload did not run


def test_a_file_of_tensors_still_loads(tmp_path):
    torch.save({"w": torch.arange(3.0)}, tmp_path / "ok.pt")
    assert load_weights_only(tmp_path / "ok.pt")["w"].tolist() == [0.0, 1.0, 2.0]
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(WeightsFileError, match=r"junk\.pt is not a readable torch state dict \(.+\); maskforge"):
        load_weights_only(tmp_path / "junk.pt")
