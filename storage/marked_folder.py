"""Folders written whole or not at all: files in a temporary folder, COMPLETE.json (their sha256) last, renamed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from maskforge.storage.fs import is_local, join, publish_file, resolve
from maskforge.storage.shards import sha256_file

#: The completion marker of a marked folder: {"files": {relative path: sha256}, ...metadata}.
COMPLETE = "COMPLETE.json"


class MarkedFolderError(ValueError):
    """A marked folder that is incomplete or altered: names the folder or file and what was expected."""


def write_marked_folder(out: str, writers: dict[str, Callable[[str], None]], marker: dict) -> None:
    """Write a folder atomically: each writer(path) writes its file (a relative path, subfolders allowed) into a
    temporary folder beside `out`, COMPLETE.json (sha256 of each file plus `marker`) last, and the folder is renamed
    into place; for a remote `out` the files are uploaded one by one, COMPLETE.json last."""
    if "files" in marker:
        raise MarkedFolderError(f"{out}: marker metadata may not use the key 'files' (it holds the sha256 list)")
    fs, path = resolve(out)
    local = is_local(fs)
    if local:
        parent = os.path.dirname(path.rstrip("/")) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{os.path.basename(path.rstrip('/'))}.", dir=parent))
    else:
        tmp = Path(tempfile.mkdtemp(prefix="maskforge-folder-"))
    try:
        for name, write in writers.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            write(str(tmp / name))
        files = {name: sha256_file(str(tmp / name)) for name in writers}
        (tmp / COMPLETE).write_text(json.dumps({**marker, "files": files}, indent=2))
        if local:
            os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; an output folder is shared like any other output
            if os.path.exists(path):  # an interrupted attempt's leftovers: it has no COMPLETE.json
                shutil.rmtree(path)
            os.replace(tmp, path)
        else:
            for name in [*writers, COMPLETE]:
                publish_file(str(tmp / name), join(out, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_marked_folder(folder: str | Path, required: Sequence[str] = (), verify: bool = True) -> dict:
    """Return a local marked folder's COMPLETE.json after checking it lists every `required` file and (verify) that
    every listed file still has its sha256; anything else is a MarkedFolderError naming the file."""
    root = Path(folder).expanduser()
    marker = root / COMPLETE
    if not marker.is_file():
        raise MarkedFolderError(f"{root}: no {COMPLETE}; the folder was never completed")
    try:
        meta = json.loads(marker.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise MarkedFolderError(f"{marker}: not valid JSON ({err})") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict):
        raise MarkedFolderError(f"{marker}: expected an object with 'files': {{name: sha256}}")
    missing = [name for name in required if name not in files]
    if missing:
        raise MarkedFolderError(f"{marker}: 'files' does not list {missing}")
    if verify:
        for name, digest in files.items():
            if not (root / name).is_file():
                raise MarkedFolderError(f"{root / name}: listed in {marker} but missing")
            if sha256_file(str(root / name)) != digest:
                raise MarkedFolderError(f"{root / name}: does not match its sha256 in {marker}")
    return meta
