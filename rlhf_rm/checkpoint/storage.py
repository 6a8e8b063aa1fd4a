"""Storage for everything that crosses a node: local paths and URIs (s3://, gs://) through `pyarrow.fs`.

`pyarrow.fs.FileSystem.from_uri` is the layer Ray Train itself writes checkpoints with, so a URI that
works as `trainer.storage_path` works here too, query settings included
(`s3://bucket/prefix?endpoint_override=host:port&scheme=http`; credentials from the standard AWS/GCP
environment). Checkpoints are read from a node-local cache ($RLHF_RM_CACHE/checkpoints, default
~/.cache/rlhf_rm/checkpoints): one download per node and content (a file lock; the download goes to a
temporary directory renamed into place, so a partial download is never used).

Leaf module: the standard library, pyarrow and filelock only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

METADATA_FILE = "rlhf_rm.json"
CERTIFICATE_FILE = "parity_certificate.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Written last by upload_dir: while they are missing, the checkpoint is still being uploaded.
LAST_FILES = (CERTIFICATE_FILE, METADATA_FILE)
DOWNLOAD_CHUNK = 32 << 20  # bytes per read (one ranged GET on S3)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCHEMES = {"s3": "s3", "gcs": "gs"}  # pyarrow filesystem type_name -> URI scheme


class StorageError(ValueError):
    """One line naming the URI and what is wrong with it."""


@dataclass
class Materialized:
    path: str  # the local directory to load
    downloaded: bool  # False: it was already in this node's cache
    seconds: float
    bytes: int


def is_uri(location: str | os.PathLike | None) -> bool:
    return location is not None and bool(_URI.match(str(location))) and not str(location).startswith("file://")


def cache_root() -> Path:
    return Path(os.environ.get("RLHF_RM_CACHE") or Path.home() / ".cache" / "rlhf_rm") / "checkpoints"


def join_uri(uri: str, *parts: str) -> str:
    """`uri` with path parts appended, its query settings kept (s3://b/p?x=1 + run -> s3://b/p/run?x=1)."""
    if not is_uri(uri):
        return str(Path(uri, *parts))
    split = urlsplit(uri)
    path = "/".join([split.path.rstrip("/"), *(p.strip("/") for p in parts)])
    return urlunsplit((split.scheme, split.netloc, path, split.query, ""))


def uri_for(filesystem, path: str, like: str | None = None) -> str:
    """The URI of `path` on a pyarrow `filesystem` (what Ray Train's Checkpoint holds: .filesystem, .path).
    `like`: the URI the storage was given (e.g. trainer.storage_path), whose scheme and query settings
    (endpoint_override, ...) are reused; without it they are read back from the filesystem."""
    kind = filesystem.type_name if filesystem is not None else "local"
    if kind == "local":
        return str(path)
    if like is not None and is_uri(like):
        split = urlsplit(like)
        return f"{split.scheme}://{path.lstrip('/')}" + (f"?{split.query}" if split.query else "")
    scheme = _SCHEMES.get(kind, kind)
    query = ""
    if kind == "s3":
        options = filesystem.__reduce__()[1][0]  # S3FileSystem's own constructor arguments
        settings = {k: options.get(k) for k in ("endpoint_override", "scheme", "region")}
        query = "&".join(f"{k}={v}" for k, v in settings.items() if v and not (k == "scheme" and v == "https"))
    return f"{scheme}://{path.lstrip('/')}" + (f"?{query}" if query else "")


def resolve(uri: str):
    """(pyarrow filesystem, path) of a local path or URI; a URI pyarrow cannot read is a StorageError."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        return pafs.LocalFileSystem(), str(Path(str(uri).removeprefix("file://")).resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ValueError
        raise StorageError(f"{uri}: not a storage URI pyarrow can open: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"\s*\(Request ID: [^)]*\)", "", text)


def _has_credentials() -> bool:
    """Whether the environment names AWS credentials (an instance profile is found only by asking)."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials",)
    return any(os.environ.get(n) for n in names) or any(Path(f).exists() for f in files)


def explain(uri: str, error: BaseException) -> StorageError:
    """A storage failure as one line: what is wrong with `uri`, in words a user can act on."""
    text = str(error)
    if "NETWORK_CONNECTION" in text or "Could not resolve" in text or "connect to server" in text:
        why = "endpoint unreachable"
    elif "NO_SUCH_BUCKET" in text or re.search(r"bucket does not exist|Bucket '[^']*' not found", text):
        why = "bucket does not exist"
    elif any(k in text for k in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
                                 "AccessDenied", "Forbidden", "403")):
        why = "access refused (credentials wrong or without permission)"
    else:
        why = "storage error"
    if uri.startswith("s3://") and not _has_credentials() and why != "endpoint unreachable":
        why += "; no AWS credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
    return StorageError(f"{uri}: {why}: {_first_line(error)}")


def list_files(uri: str) -> dict[str, tuple[int, float]]:
    """{relative name: (size, mtime)} of every file under `uri`; empty when nothing is there."""
    import pyarrow.fs as pafs

    filesystem, root = resolve(uri)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as error:
        raise explain(uri, error) from None
    if not infos and is_uri(uri):  # a missing bucket lists as empty: say which it is
        bucket = root.split("/", 1)[0]
        try:
            if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise StorageError(f"{uri}: bucket does not exist: {bucket}")
        except OSError as error:
            raise explain(uri, error) from None
    return {info.path[len(root):].lstrip("/"): (info.size, info.mtime.timestamp() if info.mtime else 0.0)
            for info in infos if info.type == pafs.FileType.File}


def checkpoint_problem(files: dict) -> str | None:
    """What makes a listing not a complete checkpoint (None: complete)."""
    if not files:
        return "no checkpoint there (no files under it)"
    missing = [name for name in (METADATA_FILE, CERTIFICATE_FILE) if name not in files]
    if not any(name in files for name in WEIGHT_FILES):
        missing.append(f"weights ({WEIGHT_FILES[0]})")
    if missing:
        return f"incomplete checkpoint (half uploaded, or not a checkpoint): missing {', '.join(missing)}"
    return None


def check_checkpoint_uri(uri: str) -> dict[str, tuple[int, float]]:
    """Fail with one line unless `uri` holds a complete checkpoint; returns its listing. Local paths pass
    through untouched (their loader reports what is missing)."""
    if not is_uri(uri):
        return {}
    files = list_files(uri)
    problem = checkpoint_problem(files)
    if problem:
        raise StorageError(f"{uri}: {problem}")
    return files


def check_writable(uri: str) -> None:
    """Fail with one line unless `uri` can be written (a probe object under it, removed again; nothing
    already stored is touched). Local paths: created if missing."""
    filesystem, root = resolve(uri)
    probe = f"{root.rstrip('/')}/.rlhf_rm_write_probe-{uuid.uuid4().hex}"
    try:
        filesystem.create_dir(root, recursive=True)
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"probe")
        filesystem.delete_file(probe)
    except OSError as error:
        raise explain(uri, error) from None


def content_key(uri: str, files: dict) -> str:
    """Cache key of a remote directory: its location and every file's name, size and mtime (a rewrite of
    any file, or another checkpoint of the same shape, gets another key)."""
    _, root = resolve(uri)
    listing = json.dumps([root, sorted((name, size, mtime) for name, (size, mtime) in files.items())])
    return hashlib.sha256(listing.encode()).hexdigest()[:32]


def materialize(uri: str) -> str:
    """A local directory holding the checkpoint at `uri` (a local path is returned as it is)."""
    return fetch_checkpoint(uri).path


def fetch_checkpoint(uri: str, cache_dir: str | Path | None = None) -> Materialized:
    """Download the checkpoint at `uri` into this node's cache once (checked first: a missing or half-uploaded
    checkpoint is a StorageError, never a cache entry). Concurrent callers on a node wait for one download."""
    from filelock import FileLock

    started = time.perf_counter()
    if not is_uri(uri):
        return Materialized(str(uri), False, 0.0, 0)
    files = check_checkpoint_uri(uri)
    root = Path(cache_dir) if cache_dir else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / content_key(uri, files)
    size = sum(s for s, _ in files.values())
    with FileLock(str(target) + ".lock"):
        if target.is_dir():
            return Materialized(str(target), False, time.perf_counter() - started, size)
        for leftover in root.glob(f"{target.name}.partial-*"):  # a download killed half way (we hold the lock)
            shutil.rmtree(leftover, ignore_errors=True)
        staging = root / f"{target.name}.partial-{os.getpid()}"
        try:
            _download(uri, staging, files)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return Materialized(str(target), True, time.perf_counter() - started, size)


def _download(uri: str, staging: Path, files: dict) -> None:
    import pyarrow.fs as pafs

    filesystem, root = resolve(uri)
    for name in files:  # copy_files does not create local directories
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
    try:
        # Large reads: each read of an S3 file is one ranged GET (pyarrow's 1 MiB default made a 540 MB
        # checkpoint 540 requests, which an S3-compatible server may answer slowly).
        pafs.copy_files(root, str(staging), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem(), chunk_size=DOWNLOAD_CHUNK, use_threads=True)
    except OSError as error:
        raise explain(uri, error) from None
    for name, (size, _) in files.items():
        local = staging / name
        if not local.is_file() or local.stat().st_size != size:
            raise StorageError(f"{uri}: download incomplete: {name} has "
                               f"{local.stat().st_size if local.exists() else 0} of {size} bytes")


def upload_dir(local_dir: str | Path, uri: str, overwrite: bool = False) -> str:
    """Copy a local directory to `uri` (its files; the checkpoint's rlhf_rm.json and parity certificate
    last, so a reader never takes a half upload for a checkpoint). Refuses a destination that already
    holds files unless `overwrite` (run outputs that are rewritten on purpose): nothing stored is lost."""
    filesystem, root = resolve(uri)
    local_dir = Path(local_dir)
    if not overwrite and list_files(uri):
        raise StorageError(f"{uri}: already holds files; refusing to overwrite them (choose another destination)")
    names = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    names.sort(key=lambda name: name in LAST_FILES)
    try:
        for name in names:
            destination = f"{root.rstrip('/')}/{name}"
            filesystem.create_dir(destination.rsplit("/", 1)[0], recursive=True)
            with open(local_dir / name, "rb") as source, filesystem.open_output_stream(destination) as stream:
                shutil.copyfileobj(source, stream, 8 << 20)
    except OSError as error:
        raise explain(uri, error) from None
    return uri


OUTPUT_DIRS = (".hydra", "wandb")  # besides a run directory's top-level files (metrics, progress, diagnostics)


def upload_run_outputs(run_dir: str | Path, uri: str) -> None:
    """Copy what users read after a run (run_dir's top-level files, its Hydra config and W&B files) to `uri`,
    replacing the previous copy of those files (they are rewritten as the run goes on)."""
    import tempfile

    run_dir = Path(run_dir)
    with tempfile.TemporaryDirectory(prefix="rlhf_rm_outputs_") as staging:
        for path in run_dir.iterdir() if run_dir.is_dir() else ():
            if path.is_file() and ".tmp" not in path.name:
                shutil.copy2(path, Path(staging, path.name))
            elif path.is_dir() and path.name in OUTPUT_DIRS:
                shutil.copytree(path, Path(staging, path.name), ignore_dangling_symlinks=True, symlinks=False)
        upload_dir(staging, uri, overwrite=True)
