"""The DAM interface the backends implement (import it as ``pipeline.dam``)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Mapping


class DAMError(RuntimeError):
    """A DAM could not be opened, read or written; the message names the URI and the fix."""


@dataclass(frozen=True)
class StoredObject:
    """One object as the DAM holds it.

    ``sha256`` is the hex SHA-256 of the whole object (the value the manifest
    keeps). ``storage_checksum`` is the store's own checksum when it has one
    (S3 ``ChecksumSHA256``: base64, composite for multipart uploads), else None.
    ``sha256`` is None only from ``head(key, checksum=False)`` on a store that would have to
    read the whole object to know it (a directory). ``mtime_ns``: a directory's modification
    time, which stands in for the checksum when nothing is re-read.
    """

    key: str
    size: int
    sha256: str | None
    storage_checksum: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    mtime_ns: int | None = None


class DAM(ABC):
    """Where deliverables are kept. Keys are '/'-separated and relative to the DAM root."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """The DAM root as a URI (``file:///...`` or ``s3://bucket/prefix``)."""

    @abstractmethod
    def put_file(
        self,
        key: str,
        path: str | os.PathLike,
        *,
        sha256: str | None = None,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> StoredObject:
        """Store a local file under ``key``; ``sha256`` (hex) saves hashing it again."""

    @abstractmethod
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> StoredObject:
        """Store ``data`` under ``key``."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""

    @abstractmethod
    def head(self, key: str, *, checksum: bool = True) -> StoredObject | None:
        """Size and checksums of an object, or None when there is no such object. ``checksum=False``:
        what the store knows without reading the object (a directory: size and mtime, no SHA-256)."""

    @abstractmethod
    def update_bytes(self, key: str, update: Callable[[bytes | None], bytes | None]) -> None:
        """Read-modify-write ``key`` safely against other writers: ``update`` gets the
        current bytes (None: no object) and returns the new ones (None: leave it). It may
        be called more than once, when another writer got in between (S3: a conditional
        PUT on the ETag; a directory: an O_EXCL lock file)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under ``key`` (no error when there is none)."""

    @abstractmethod
    def list_keys(self, prefix: str = "", suffix: str = "") -> list[str]:
        """The keys of the objects under the folder ``prefix`` (no trailing '/'; "" is the whole
        DAM) that end with ``suffix``, sorted; a directory's hidden files (".name") are not objects."""

    @abstractmethod
    def get_tags(self, key: str) -> dict[str, str] | None:
        """The object's tags, or None when there is no such object."""

    @abstractmethod
    def put_tags(self, key: str, tags: Mapping[str, str]) -> None:
        """Replace the tags of the existing object ``key`` with ``tags``."""

    @abstractmethod
    def url(self, key: str, expires_s: int) -> str:
        """Where a client fetches the object: a presigned GET URL valid ``expires_s``
        seconds (S3), or a ``file://`` URI (local; it does not expire)."""
