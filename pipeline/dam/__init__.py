"""The DAM: where deliverables are kept, behind one interface, :class:`DAM`.

Where each part lives:

- this module: the interface (:class:`DAM`, :class:`StoredObject`,
  :class:`DAMError`) and :func:`open_dam`, which picks a backend from a URI;
- :mod:`pipeline.dam.keys`: the key layout and the whole-file SHA-256;
- :mod:`pipeline.dam.local`: a local directory (the default, ``./dam``);
- :mod:`pipeline.dam.s3`: an S3 bucket + prefix (any S3-compatible store via an
  endpoint URL; credentials from the standard AWS chain).

What a render's objects mean together (assets, then the completion record) is
the archive stage's business: :mod:`pipeline.archive`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import unquote, urlparse


class DAMError(RuntimeError):
    """A DAM could not be opened, read or written; the message names the URI and the fix."""


@dataclass(frozen=True)
class StoredObject:
    """One object as the DAM holds it.

    ``sha256`` is the hex SHA-256 of the whole object (the value the manifest
    keeps). ``storage_checksum`` is the store's own checksum when it has one
    (S3 ``ChecksumSHA256``: base64, composite for multipart uploads), else None.
    """

    key: str
    size: int
    sha256: str
    storage_checksum: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


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
    def head(self, key: str) -> StoredObject | None:
        """Size and checksums of an object, or None when there is no such object."""

    @abstractmethod
    def url(self, key: str, expires_s: int) -> str:
        """Where a client fetches the object: a presigned GET URL valid ``expires_s``
        seconds (S3), or a ``file://`` URI (local; it does not expire)."""


def open_dam(uri: str | os.PathLike = "./dam", s3_endpoint: str | None = None, **s3_options: Any) -> DAM:
    """Open a DAM from ``./dam``, ``/abs/path``, ``file:///abs/path`` or ``s3://bucket/prefix``.

    ``s3_endpoint`` is the endpoint URL of an S3-compatible store; left None,
    boto3 uses AWS (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set).
    ``s3_options`` go to :class:`~pipeline.dam.s3.S3DAM`.
    """
    # Imported here: the backends import this module, and a local DAM needs no boto3.
    from pipeline.dam.local import LocalDAM
    from pipeline.dam.s3 import S3DAM

    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        return S3DAM(parsed.netloc, unquote(parsed.path), endpoint_url=s3_endpoint, **s3_options)
    if s3_endpoint or s3_options:
        raise DAMError(f"DAM {text!r} is a local directory; S3 options ({'s3_endpoint' if s3_endpoint else ', '.join(s3_options)}) apply only to s3:// DAMs")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DAMError(f"DAM {text!r}: file:// URIs must name a local path (file:///abs/path)")
        return LocalDAM(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
        raise DAMError(f"DAM {text!r}: unsupported scheme {parsed.scheme!r}; use a directory path, file:///abs/path or s3://bucket/prefix")
    return LocalDAM(text)

