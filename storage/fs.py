"""fsspec helpers: resolve run URLs, atomic writes and publishing of locally staged files to local or remote stores."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from maskforge.storage.object_store import S3_PROTOCOLS, protocol_of, storage_options, store_problem


def resolve(url: str) -> tuple[AbstractFileSystem, str]:
    """Return (filesystem, path within it) for a local path or an fsspec URL such as memory://x/run or s3://b/run
    (S3: credentials, endpoint and region from the environment or a config, storage/object_store.py)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"expected a non-empty path or fsspec URL, got {url!r}")
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    return fs, path


def absolute(url: str) -> str:
    """Return a local path made absolute (user folder expanded), a URL unchanged: a run folder handed to Dask
    workers must not depend on their working directory."""
    if protocol_of(url) is not None:
        return url
    return os.path.abspath(os.path.expanduser(url))


def _atomic_put(fs: AbstractFileSystem) -> bool:
    """Whether one upload to fs is already atomic: an S3 PUT (multipart ones too) makes the object appear whole or
    not at all, so the temporary key and the copy a move costs there are not needed."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return any(p in S3_PROTOCOLS for p in protocols)


def is_local(fs: AbstractFileSystem) -> bool:
    """Return True when fs is the local disk (so os.replace and webdataset's own file opener work on its paths)."""
    return isinstance(fs, LocalFileSystem)


def location_key(url: str) -> str:
    """Return one name for the place a path or URL points to, so two spellings of it compare equal: a local path
    absolute, symlinks resolved, without a trailing slash (`runs/demo`, `runs/demo/`, `./runs/demo` and
    `file:///abs/runs/demo` are one); a remote URL as protocol://path the way fsspec normalises it."""
    fs, path = resolve(url)
    if is_local(fs):
        return os.path.realpath(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{path.rstrip('/')}"


def join(url: str, *parts: str) -> str:
    """Join path parts onto a path or URL with '/', keeping the URL's protocol (posix separators only)."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def read_bytes(url: str) -> bytes:
    """Return the whole content of the file at url."""
    fs, path = resolve(url)
    return fs.cat_file(path)


def file_problem(path: str | Path) -> str | None:
    """Why a local path cannot be read as a file ("not found", "is a folder, not a file", "is not a regular file"),
    or None when it can: error messages say which, instead of "not found" for a folder."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        return "is a folder, not a file"
    return "is not a regular file" if path.exists() else "not found"


def exists(url: str) -> bool:
    """Return True if a file or folder exists at url."""
    fs, path = resolve(url)
    return fs.exists(path)


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write data to url so readers see either the old file or the whole new one, never a partial file."""
    fs, path = resolve(url)
    parent = os.path.dirname(path) if is_local(fs) else path.rsplit("/", 1)[0]
    if is_local(fs):
        os.makedirs(parent, exist_ok=True)
        # The temp file lives in the target folder so os.replace is a same-filesystem atomic rename; os.open with
        # 0o666 (not mkstemp's 0o600) so the final file gets the same umask-based mode as any other written file.
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return
    if _atomic_put(fs):
        fs.pipe_file(path, data)
        return
    # Other stores have no rename; a temp key plus move keeps the final key from ever holding partial bytes.
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


#: Names atomic_write_bytes gives its temporary files: `.NAME.<32 hex>.tmp` locally, `NAME.tmp-<32 hex>` on object
#: stores, and the `.part` uploads of publish_file. A kill (SIGKILL, power loss) between write and rename leaves them.
STALE_TEMPORARY = re.compile(r"(^\..+\.[0-9a-f]{32}\.tmp$)|(\.tmp-[0-9a-f]{32}$)|(\.part$)")


def remove_stale_temporaries(url: str) -> list[str]:
    """Remove the temporary files a killed writer left anywhere under the folder `url` (STALE_TEMPORARY names only:
    nothing a user put there); return the removed paths. Call it only where no writer of that folder is running."""
    fs, path = resolve(url)
    if not fs.isdir(path):
        return []
    stale = [f for f in fs.find(path) if STALE_TEMPORARY.search(f.rstrip("/").rsplit("/", 1)[-1])]
    for file in stale:
        fs.rm(file)
    return stale


def publish_file(local_path: str, url: str) -> None:
    """Move a finished local file to url: os.replace locally, else upload to url + '.part' and move into place."""
    if not os.path.isfile(local_path):
        raise FileNotFoundError(f"cannot publish {local_path!r} to {url!r}: no such local file")
    fs, path = resolve(url)
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(local_path, path)
        return
    if _atomic_put(fs):
        fs.put_file(local_path, path)
        os.remove(local_path)
        return
    part = f"{path}.part"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.put_file(local_path, part)
    fs.mv(part, path)
    os.remove(local_path)


def move(src_url: str, dst_url: str) -> None:
    """Move a file within one filesystem (a rename locally), creating the destination folder."""
    fs, src = resolve(src_url)
    _, dst = resolve(dst_url)
    fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(src, dst)


def remove_tree(url: str) -> None:
    """Delete a folder and everything below it; a missing folder is fine."""
    fs, path = resolve(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


class OutputLocationError(ValueError):
    """An output location that cannot take a run: names the path, what is wrong there and what would help."""


def check_output_location(url: str, need_bytes: int = 0, field: str = "run.out_dir") -> None:
    """Check, before any work, that runs can be written under `url` (created if missing, never a run folder).

    Remote URLs: the fsspec protocol must be installed (the error names the package to install); an S3 bucket must
    exist and take a probe object with the credentials and endpoint in effect (storage/object_store.py). Local
    paths: no file in the way, its nearest existing folder writable (a probe file is written and removed; nothing
    is created), and about `need_bytes` free on that disk.
    """
    if not isinstance(url, str) or not url.strip():
        raise OutputLocationError(f"{field}: empty; expected a folder path or an fsspec URL")
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol not in (None, "file", "local"):
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as err:
            fix = " (pip install 'maskforge[s3]')" if protocol in S3_PROTOCOLS else ""
            raise OutputLocationError(
                f"{field}: {url!r} needs an fsspec backend that is not installed{fix}: {err}"
            ) from None
        except ValueError as err:
            raise OutputLocationError(f"{field}: {url!r}: {err}") from None
        if protocol in S3_PROTOCOLS:
            problem = store_problem(url)
            if problem:
                raise OutputLocationError(f"{field}: {url}: {problem}")
        return
    folder = Path(url.split("://", 1)[-1]).expanduser().absolute()
    existing = next(ancestor for ancestor in (folder, *folder.parents) if ancestor.exists())
    if not existing.is_dir():
        where = "" if existing == folder else f", so {folder} cannot be created"
        raise OutputLocationError(f"{field}: {existing} is a file{where}; expected a folder")
    try:  # a probe file where the first new folder would go: nothing is created that a failed run leaves behind
        probe = existing / f".maskforge-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputLocationError(f"{field}: cannot write in {existing} ({err.strerror or err})") from None
    free = shutil.disk_usage(existing).free
    if need_bytes and free < need_bytes:
        raise OutputLocationError(
            f"{field}: {existing} has {free / 1e6:.0f} MB free; this run needs about {need_bytes / 1e6:.0f} MB"
        )
