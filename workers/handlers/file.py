"""The ``file`` task type: read, write, append, copy, move, delete, mkdir, list under one root.

The root is ``FLOWQ_FILE_ROOT`` (default ``./flowq-files``, created when missing). ``path`` and
``to`` are relative to it and must stay inside it after resolving ``..`` and symlinks; anything
else fails at once. Result: ``{"path": <destination, relative to the root>, "bytes": int}`` plus
``content`` (UTF-8 text) for read and ``entries`` (sorted names, directories ending in ``/``)
for list.

Choices where SPEC is silent:

- ``bytes``: read/write/append: bytes read or written by this task; copy/move/delete: the
  file's size (0 for a directory or symlink); mkdir: 0; list: total size of the listed files.
- write and copy replace the destination atomically (temp file in the same directory, fsync,
  ``os.replace``); new files get the umask's mode, an overwritten file keeps its mode, a copy
  takes its source's. Parents are created for write, append, copy and move.
- a ``content`` that is not a string (a native template result) is written as JSON.
- copy copies one file; move renames a file, symlink or directory; neither moves *into* an
  existing directory: ``to`` is the exact new path, and an existing file there is replaced.
- delete removes a file, a symlink (not its target) or an empty directory; a missing path or a
  non-empty directory fails. mkdir is idempotent. ``path`` defaults to the root for list.
- a missing file, a wrong kind of file or a permission problem fails at once; other I/O errors
  (disk full, I/O error) are retried.

Paths are checked, then used: the root belongs to the operator, and a process that swaps a
directory for a symlink between the two is not defended against.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from flowq.context import TaskContext
from flowq.errors import PermanentError, TaskError

ROOT_ENV = "FLOWQ_FILE_ROOT"
DEFAULT_ROOT = "./flowq-files"
OPERATIONS = ("read", "write", "append", "copy", "move", "delete", "mkdir", "list")
TMP_PREFIX = ".flowq-tmp-"

# OSErrors that another attempt cannot fix; any other OSError (ENOSPC, EIO, ...) is retried.
_PERMANENT_ERRNOS = {
    errno.ENOENT,
    errno.EEXIST,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENOTEMPTY,
    errno.EACCES,
    errno.EPERM,
    errno.ELOOP,
    errno.ENAMETOOLONG,
    errno.EINVAL,
    errno.EXDEV,
    errno.EROFS,
}


@dataclass(frozen=True)
class _Target:
    """A path checked to be inside the root."""

    rel: str  # relative to the root, as reported in the result
    entry: Path  # the directory entry itself: a final symlink is not followed
    real: Path  # every symlink followed


def root() -> Path:
    """The resolved root folder, created when missing."""
    configured = Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    configured.mkdir(parents=True, exist_ok=True)
    return Path(os.path.realpath(configured))


def execute(spec: Mapping[str, Any], ctx: TaskContext) -> Any:
    """Perform ``spec["operation"]`` and return what it did."""
    operation = spec.get("operation")
    if operation not in OPERATIONS:
        raise PermanentError(
            f"file task: unknown operation {operation!r}; use one of {', '.join(OPERATIONS)}"
        )
    base = root()
    raw_path = spec.get("path")
    if raw_path in (None, "") and operation == "list":
        raw_path = "."
    target = resolve(base, raw_path, "path", operation)
    try:
        if operation in ("copy", "move"):
            dest = resolve(base, spec.get("to"), "to", operation)
            return _copy(target, dest) if operation == "copy" else _move(base, target, dest)
        if operation in ("write", "append"):
            data = _encode(spec.get("content"), operation, target.rel)
            return _write(target, data) if operation == "write" else _append(target, data)
        return _SIMPLE[operation](base, target)
    except OSError as exc:
        shown = _failed_path(base, exc, target.rel)
        message = f"file {operation} {shown!r}: {exc.strerror or type(exc).__name__}"
        if exc.errno in _PERMANENT_ERRNOS:
            raise PermanentError(message) from exc
        raise TaskError(message) from exc


def resolve(base: Path, raw: Any, key: str, operation: str) -> _Target:
    """Check that ``raw`` names a path inside ``base``, following ``..`` and symlinks."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw:
        raise PermanentError(f"file {operation}: the task needs a '{key}' string")
    if "\x00" in raw:
        raise PermanentError(f"file {operation}: {key} {raw!r} contains a NUL character")
    if os.path.isabs(raw):
        raise PermanentError(
            f"file {operation}: {key} {raw!r} is absolute; use a path relative to {ROOT_ENV}"
        )
    real = Path(os.path.realpath(base / raw))
    parent, name = os.path.split(raw.rstrip("/"))
    entry = real if name in ("", ".", "..") else Path(os.path.realpath(base / parent)) / name
    if not (real.is_relative_to(base) and entry.is_relative_to(base)):
        raise PermanentError(
            f"file {operation}: {key} {raw!r} escapes {ROOT_ENV}; "
            "use a path inside it, without '..' or symlinks that lead out"
        )
    return _Target(rel=entry.relative_to(base).as_posix(), entry=entry, real=real)


def _read(base: Path, target: _Target) -> dict[str, Any]:
    data = target.real.read_bytes()
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PermanentError(f"file read {target.rel!r}: not UTF-8 text") from None
    return {"path": target.rel, "bytes": len(data), "content": content}


def _write(target: _Target, data: bytes) -> dict[str, Any]:
    target.real.parent.mkdir(parents=True, exist_ok=True)
    written = _atomic_write(target.real, lambda out: out.write(data), _existing_mode(target.real))
    return {"path": target.rel, "bytes": written}


def _append(target: _Target, data: bytes) -> dict[str, Any]:
    target.real.parent.mkdir(parents=True, exist_ok=True)
    with target.real.open("ab") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return {"path": target.rel, "bytes": len(data)}


def _copy(source: _Target, dest: _Target) -> dict[str, Any]:
    if source.real.is_dir():
        raise PermanentError(f"file copy {source.rel!r}: is a directory; copy copies one file")
    dest.real.parent.mkdir(parents=True, exist_ok=True)
    with source.real.open("rb") as src:
        mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
        written = _atomic_write(dest.real, lambda out: _copy_stream(src, out), mode)
    return {"path": dest.rel, "bytes": written}


def _move(base: Path, source: _Target, dest: _Target) -> dict[str, Any]:
    if source.entry == base:
        raise PermanentError(f"file move {source.rel!r}: cannot move the root")
    info = source.entry.lstat()
    if dest.entry.is_dir() and not dest.entry.is_symlink():
        raise PermanentError(f"file move: to {dest.rel!r} is an existing directory")
    dest.entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source.entry, dest.entry)
    except OSError as exc:
        if exc.errno != errno.EXDEV or not stat.S_ISREG(info.st_mode):
            raise
        _copy(source, dest)  # another filesystem under the root: copy, then remove
        source.entry.unlink()
    return {"path": dest.rel, "bytes": _size(info)}


def _delete(base: Path, target: _Target) -> dict[str, Any]:
    if target.entry == base:
        raise PermanentError(f"file delete {target.rel!r}: cannot delete the root")
    info = target.entry.lstat()
    if stat.S_ISDIR(info.st_mode):
        target.entry.rmdir()
    else:
        target.entry.unlink()
    return {"path": target.rel, "bytes": _size(info)}


def _mkdir(base: Path, target: _Target) -> dict[str, Any]:
    target.real.mkdir(parents=True, exist_ok=True)
    return {"path": target.rel, "bytes": 0}


def _list(base: Path, target: _Target) -> dict[str, Any]:
    entries, total = [], 0
    with os.scandir(target.real) as found:
        for item in found:
            if item.name.startswith(TMP_PREFIX):
                continue  # a write in progress
            if item.is_dir():
                entries.append(item.name + "/")
            else:
                entries.append(item.name)
                with contextlib.suppress(OSError):
                    total += item.stat().st_size if item.is_file() else 0
    return {"path": target.rel, "bytes": total, "entries": sorted(entries)}


_SIMPLE: dict[str, Callable[[Path, _Target], dict[str, Any]]] = {
    "read": _read,
    "delete": _delete,
    "mkdir": _mkdir,
    "list": _list,
}


def _atomic_write(dest: Path, fill: Callable[[BinaryIO], int], mode: int | None) -> int:
    """Write ``dest`` through a temp file in its directory: readers see old or new, never half."""
    temp = dest.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as out:
            written = fill(out)
            out.flush()
            if mode is not None:
                os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_directory(dest.parent)
    return written


def _copy_stream(src: BinaryIO, out: BinaryIO) -> int:
    shutil.copyfileobj(src, out)
    return out.tell()


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; some filesystems cannot, which costs durability, not correctness."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _existing_mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def _size(info: os.stat_result) -> int:
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _encode(content: Any, operation: str, rel: str) -> bytes:
    if content is None:
        raise PermanentError(f"file {operation} {rel!r}: the task needs 'content'")
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode("utf-8")
    try:
        return json.dumps(content).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"file {operation} {rel!r}: content is not JSON: {exc}") from exc


def _failed_path(base: Path, exc: OSError, fallback: str) -> str:
    """The path an OSError names, relative to the root; never a temp file or the root's location."""
    for name in (exc.filename, exc.filename2):
        if isinstance(name, str | os.PathLike):
            path = Path(os.fspath(name))
            if not path.name.startswith(TMP_PREFIX) and path.is_relative_to(base):
                return path.relative_to(base).as_posix()
    return fallback
