"""The local-directory DAM backend (the default, ``./dam``)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from pipeline.dam.base import DAM, DAMError, StoredObject
from pipeline.dam.keys import check_key, file_sha256


class LocalDAM(DAM):
    """A directory. Files are written to a temporary name in the target folder
    and renamed into place, so a partial file never appears under its key.

    A directory has no per-file metadata: the ``metadata`` argument is not
    stored here (a render's metadata lives in its completion record, which both
    backends write). Tags are kept as JSON beside the tree, under
    ``.tags/<key>.json``; keys never start with '.', so no object shadows them.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise DAMError(f"DAM {self.uri}: {self.root} exists and is not a directory; pick another --dam path")

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write(self, key: str, write: Callable[[BinaryIO], None]) -> Path:
        target = self._path(key)
        # A unique hidden name in the same folder: os.replace is then atomic, and
        # os.open's mode lets the umask set the permissions (mkstemp would force 0600).
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise DAMError(f"DAM {self.uri}: cannot write {key}: {exc}; check that the directory is writable") from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def put_file(self, key, path, *, sha256=None, metadata=None, tags=None, content_type=None) -> StoredObject:
        source = Path(path)
        digest = hashlib.sha256()

        def copy(handle: BinaryIO) -> None:
            with open(source, "rb") as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    handle.write(chunk)
            if sha256 is not None and sha256 != digest.hexdigest():
                raise DAMError(f"DAM {self.uri}: {source} changed while it was archived as {key}; archive it again")

        target = self._write(key, copy)
        if tags:
            self.put_tags(key, tags)
        stat = target.stat()
        return StoredObject(key=key, size=stat.st_size, sha256=digest.hexdigest(), mtime_ns=stat.st_mtime_ns)

    def put_bytes(self, key, data, *, metadata=None, tags=None, content_type=None) -> StoredObject:
        target = self._write(key, lambda handle: handle.write(data))
        if tags:
            self.put_tags(key, tags)
        return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                            mtime_ns=target.stat().st_mtime_ns)

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def head(self, key: str, *, checksum: bool = True) -> StoredObject | None:
        # A directory keeps no checksum, so it is recomputed (what is on disk is what counts),
        # unless the caller settles for size and mtime: re-hashing terabytes to skip a render is not.
        path = self._path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return StoredObject(key=key, size=stat.st_size, sha256=file_sha256(path) if checksum else None,
                            mtime_ns=stat.st_mtime_ns)

    def update_bytes(self, key, update) -> None:
        with self._lock(key):
            new = update(self.get_bytes(key))
            if new is not None:
                self.put_bytes(key, new)

    def _lock(self, key: str) -> "_LockFile":
        return _LockFile(self._path(key).with_name(f".{self._path(key).name}.lock"), self.uri)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise DAMError(f"DAM {self.uri}: cannot delete {key}: {exc}; check that the directory is writable") from exc

    def list_keys(self, prefix: str = "", suffix: str = "") -> list[str]:
        keys: list[str] = []
        # scandir, pruning hidden folders (.tags, locks) as it goes: a DAM of a million renders is
        # millions of entries, and rglob would build and filter a Path for every one of them.
        pending = [(self._path(prefix), f"{prefix}/")] if prefix else [(self.root, "")]
        while pending:
            folder, base = pending.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, f"{base}{entry.name}/"))
                elif entry.name.endswith(suffix) and entry.is_file():
                    keys.append(base + entry.name)
        return sorted(keys)

    def _tags_path(self, key: str) -> Path:
        return self.root / ".tags" / f"{check_key(key)}.json"

    def get_tags(self, key: str) -> dict[str, str] | None:
        if not self._path(key).is_file():
            return None
        path = self._tags_path(key)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def put_tags(self, key: str, tags) -> None:
        if not self._path(key).is_file():
            raise DAMError(f"DAM {self.uri}: cannot tag {key}: there is no such object; archive it first")
        self._write(f".tags/{key}.json", lambda handle: handle.write(json.dumps(dict(tags), sort_keys=True).encode()))

    def url(self, key: str, expires_s: int) -> str:
        return self._path(key).as_uri()


class _LockFile:
    """An O_EXCL lock file holding its owner's host and pid. A lock whose owner on this host
    is gone (a killed job) is taken over at once; one held longer than ``stale_s`` too."""

    def __init__(self, path: Path, where: str, wait_s: float = 120.0, stale_s: float = 300.0):
        self.path, self.where, self.wait_s, self.stale_s = path, where, wait_s, stale_s

    def _owner_gone(self) -> bool:
        try:
            host, pid = self.path.read_text().split()[:2]
            if time.time() - self.path.stat().st_mtime > self.stale_s:
                return True
        except (OSError, ValueError):
            return False  # being written or just removed: look again
        if host != socket.gethostname():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __enter__(self) -> "_LockFile":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                if self._owner_gone():
                    self.path.unlink(missing_ok=True)
                    continue
                if time.monotonic() > deadline:
                    raise DAMError(f"DAM {self.where}: {self.path} has been held by another job for over "
                                   f"{self.wait_s:.0f} s; if no paddock job is running, delete it") from None
                time.sleep(0.05)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}\n")
            return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
