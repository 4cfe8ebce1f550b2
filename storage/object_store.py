"""S3-compatible object stores (s3fs): connection options from the environment or a config, and the pre-flight probe.

Credentials, endpoint and region come from the usual environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION or AWS_REGION), which botocore
reads itself, or from fsspec storage options a config gives (`run.storage_options`), registered in this process for
the config's out_dir with use_storage_options: they apply to that location and everything under it, nowhere else.
Neither is ever written anywhere: the options live in this process's memory only. s3fs keeps one filesystem per
set of options in a process, which reads the environment when it first connects: set the variables before the first
access to the store (tests that change them clear s3fs's instance cache).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

#: fsspec protocols served by s3fs.
S3_PROTOCOLS = ("s3", "s3a")
#: Seconds the pre-flight probe waits for an endpoint to connect and to answer (botocore's defaults are 60 s each).
PROBE_TIMEOUT_S = 5

#: {location URL without a trailing slash: fsspec storage options} registered from configs (use_storage_options).
_configured: dict[str, dict[str, Any]] = {}


def protocol_of(url: str) -> str | None:
    """Return the fsspec protocol of a URL ('s3' for s3://b/p), or None for a plain local path."""
    return url.split("://", 1)[0].lower() if "://" in url else None


def use_storage_options(url: str, options: dict[str, Any] | None) -> None:
    """Make every later access to `url` and the paths under it in this process use fsspec `options` (a config's
    run.storage_options for its out_dir: key, secret, client_kwargs.endpoint_url, ...); None makes that location use
    the environment again (a config without options after one with them).

    Per location, not per call: every reader and writer of a run goes through storage/fs.py:resolve, and tasks on
    Dask workers receive the config (options included, in memory) and register them before touching the store.
    Other locations (another bucket, another prefix) keep their own options or the environment's.
    """
    if protocol_of(url) is None:
        return
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"run.storage_options: expected a mapping of fsspec options, got {type(options).__name__}")
    location = url.rstrip("/")
    if options is None:
        _configured.pop(location, None)
    else:
        _configured[location] = dict(options)


def _registered(url: str) -> dict[str, Any]:
    """Return the options registered for the longest location that is `url` or holds it ({} when none)."""
    found = [loc for loc in _configured if url.rstrip("/") == loc or url.startswith(f"{loc}/")]
    return dict(_configured[max(found, key=len)]) if found else {}


def storage_options(url: str) -> dict[str, Any]:
    """Return the fsspec options resolve() opens `url` with: for S3, no listing cache (workers in other processes
    write the same bucket: a cached listing would hide their parts), the region from AWS_REGION when
    AWS_DEFAULT_REGION (the one botocore reads) is unset, then the options a config registered for its location."""
    protocol = protocol_of(url)
    configured = _registered(url) if protocol else {}
    if protocol not in S3_PROTOCOLS:
        return configured
    options: dict[str, Any] = {"use_listings_cache": False}
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    client_kwargs = {"region_name": region} if region else {}
    client_kwargs.update(configured.get("client_kwargs") or {})
    options.update(configured)
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def endpoint_text(url: str) -> str:
    """Name the endpoint an S3 URL goes to (for messages): storage_options' endpoint_url, AWS_ENDPOINT_URL_S3,
    AWS_ENDPOINT_URL, else AWS's own."""
    options = storage_options(url)
    configured = (options.get("client_kwargs") or {}).get("endpoint_url") or options.get("endpoint_url")
    if configured:
        return f"{configured} (run.storage_options)"
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return f"{os.environ[name]} ({name})"
    return "AWS's default endpoint (no AWS_ENDPOINT_URL set)"


def store_problem(url: str) -> str | None:
    """Why runs cannot be written under the S3 URL `url` (bucket missing, credentials refused or absent, endpoint
    not answering), found by writing and removing one empty probe object; None when the write worked.

    The probe uses a fresh client with short timeouts and one attempt: a dead endpoint is reported in seconds, not
    after botocore's and s3fs's retries. The text names what to fix, never a secret.
    """
    import fsspec
    from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError

    protocol = protocol_of(url) or "s3"
    options = storage_options(url)
    options["config_kwargs"] = {
        **(options.get("config_kwargs") or {}),
        "connect_timeout": PROBE_TIMEOUT_S,
        "read_timeout": PROBE_TIMEOUT_S,
        "retries": {"max_attempts": 1},
    }
    fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    fs.retries = 1  # s3fs retries some errors itself (5 times, with back-off) on top of botocore
    path = url.split("://", 1)[1].rstrip("/")
    bucket = path.split("/", 1)[0]
    probe = f"{path}/.maskforge-probe-{uuid.uuid4().hex}"
    endpoint = endpoint_text(url)
    try:
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except FileNotFoundError:
        return f"bucket {bucket!r} does not exist at {endpoint}; create it first or fix the URL"
    except PermissionError as err:
        return (
            f"access denied at {endpoint} ({err}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or "
            f"run.storage_options key/secret) and that they may write to bucket {bucket!r}"
        )
    except (NoCredentialsError, PartialCredentialsError):
        return (
            "s3fs found no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run.storage_options "
            "key/secret, or anon: true for a public bucket)"
        )
    except (BotoCoreError, OSError) as err:  # connection refused, DNS failure, timeout
        return f"endpoint {endpoint} does not answer ({err}); check AWS_ENDPOINT_URL and that the server runs"
    return None
