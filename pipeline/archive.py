"""Archive stage: write a render's deliverables to the DAM, idempotently.

The DAM is a local directory (default ``./dam``) or an S3 bucket + prefix
(any S3-compatible store via an endpoint URL; credentials from the standard
AWS chain). Both backends share one interface, :class:`DAM`.

Key layout, one folder per (campaign, brief, locale, aspect)::

    campaign=<campaign_id>/brief=<brief_id>/locale=<locale>/<aspect>/<render_id>.<ext>
    campaign=<campaign_id>/brief=<brief_id>/locale=<locale>/<aspect>/<render_id>.done.json

``<aspect>`` is the aspect ratio with ``:`` replaced by ``x`` ("16:9" -> "16x9"):
``:`` is legal in S3 keys but not in Windows paths and is awkward in URLs and
shells, and ``x`` reads the same way.

A render is written assets first, completion record (``.done.json``) last.
It counts as archived only when its completion record exists and every object
the record lists is in the DAM with the recorded SHA-256, so a render cut off
half-way never looks done and is redone on the next run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
import os
import re
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Literal, Mapping
from urllib.parse import unquote, urlencode, urlparse

import boto3
import pyarrow as pa
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError
from pydantic import BaseModel, ConfigDict, field_validator
from s3transfer.utils import ChunksizeAdjuster

logger = logging.getLogger(__name__)

ReviewStatus = Literal["auto_approved", "needs_review", "rejected"]

COMPLETION_SUFFIX = ".done.json"
RECORD_VERSION = 1

# Key segments come from ids and locale tags that ingest has already checked;
# this guards the key layout itself (no '/', no '..', nothing a path would mangle).
_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_ASPECT = re.compile(r"^([1-9][0-9]{0,3}):([1-9][0-9]{0,3})$")
_EXT = re.compile(r"^[a-z0-9]{1,10}$")

_CONTENT_TYPES = {
    "mp4": "video/mp4",
    "wav": "audio/wav",
    "jpg": "image/jpeg",
    "vtt": "text/vtt",
    "json": "application/json",
    "html": "text/html",
    "parquet": "application/vnd.apache.parquet",
}


class DAMError(RuntimeError):
    """A DAM could not be opened, read or written; the message names the URI and the fix."""


# --------------------------------------------------------------------------- keys


def _segment(name: str, value: str) -> str:
    if not isinstance(value, str) or not _KEY_SEGMENT.match(value):
        raise ValueError(
            f"{name}={value!r} cannot be used in a DAM key: use 1-128 characters of A-Z a-z 0-9 . _ -, "
            "not starting with '.'"
        )
    return value


def aspect_key(aspect_ratio: str) -> str:
    """Key-safe form of an aspect ratio: "16:9" -> "16x9"."""
    match = _ASPECT.match(aspect_ratio) if isinstance(aspect_ratio, str) else None
    if not match:
        raise ValueError(f"aspect_ratio={aspect_ratio!r} is not of the form 'W:H' (e.g. '16:9', '9:16', '1:1')")
    return f"{match.group(1)}x{match.group(2)}"


def render_key_prefix(campaign_id: str, brief_id: str, locale: str, aspect_ratio: str) -> str:
    """The folder of a render's objects, relative to the DAM root (no trailing '/')."""
    return (
        f"campaign={_segment('campaign_id', campaign_id)}/brief={_segment('brief_id', brief_id)}"
        f"/locale={_segment('locale', locale)}/{aspect_key(aspect_ratio)}"
    )


def render_key(campaign_id: str, brief_id: str, locale: str, aspect_ratio: str, render_id: str, ext: str) -> str:
    """The DAM key of one deliverable of a render."""
    if not _EXT.match(ext):
        raise ValueError(f"ext={ext!r} is not a file extension: use 1-10 lowercase letters or digits, no dot")
    prefix = render_key_prefix(campaign_id, brief_id, locale, aspect_ratio)
    return f"{prefix}/{_segment('render_id', render_id)}.{ext}"


def completion_key(key_prefix: str, render_id: str) -> str:
    """The key of a render's completion record, written after all its assets."""
    return f"{key_prefix}/{_segment('render_id', render_id)}{COMPLETION_SUFFIX}"


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"DAM key {key!r} must be a relative path without empty, '.' or '..' segments")
    return key


def content_type_for(key: str) -> str:
    ext = key.rsplit(".", 1)[-1].lower()
    return _CONTENT_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


# --------------------------------------------------------------------------- checksums


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def s3_multipart_sha256(path: str | os.PathLike, part_size: int) -> str:
    """S3's composite checksum of a multipart upload: base64 SHA-256 of the
    concatenated per-part SHA-256 digests (S3 appends '-<parts>'; see
    :func:`_strip_part_count`)."""
    outer = hashlib.sha256()
    with open(path, "rb") as handle:
        while part := handle.read(part_size):
            outer.update(hashlib.sha256(part).digest())
    return base64.b64encode(outer.digest()).decode()


def _b64_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _strip_part_count(checksum: str) -> str:
    # Real S3 reports composite checksums as "<base64>-<parts>"; some stores leave the suffix off.
    return checksum.split("-", 1)[0]


# --------------------------------------------------------------------------- backends


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
    def delete(self, key: str) -> None:
        """Remove the object under ``key`` (no error when there is none)."""


class LocalDAM(DAM):
    """A directory. Files are written to a temporary name in the target folder
    and renamed into place, so a partial file never appears under its key.

    A directory has no per-file metadata or tags: the ``metadata`` and ``tags``
    arguments are not stored here; a render's metadata and review tags live in
    its completion record, which both backends write.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise DAMError(f"DAM {self.uri}: {self.root} exists and is not a directory; pick another --dam path")

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

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
        return StoredObject(key=key, size=target.stat().st_size, sha256=digest.hexdigest())

    def put_bytes(self, key, data, *, metadata=None, tags=None, content_type=None) -> StoredObject:
        self._write(key, lambda handle: handle.write(data))
        return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def head(self, key: str) -> StoredObject | None:
        # A directory keeps no checksum, so it is recomputed: what is on disk is what counts.
        path = self._path(key)
        if not path.is_file():
            return None
        return StoredObject(key=key, size=path.stat().st_size, sha256=file_sha256(path))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise DAMError(f"DAM {self.uri}: cannot delete {key}: {exc}; check that the directory is writable") from exc


_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials), "
    "or AWS_PROFILE naming a profile in ~/.aws/credentials, or run where an instance/pod role is available"
)
# S3 tag values allow letters, digits, spaces and + - = . _ : / @.
_TAG_VALUE = re.compile(r"^[\w +\-=.:/@]{0,256}$")


class S3DAM(DAM):
    """An S3 bucket + key prefix, or any S3-compatible store via ``endpoint_url``.

    Uploads send a SHA-256 checksum (S3 verifies it on receipt; multipart
    uploads get one per part) and carry the whole-object hex SHA-256 in the
    ``sha256`` metadata field. After each upload the stored checksum is read
    back and compared with the local file's. Throttling and 5xx responses are
    retried by botocore (``retry_mode="adaptive"``: exponential backoff with
    jitter, plus client-side rate limiting once S3 throttles), up to
    ``max_attempts`` tries per request.

    The boto3 client is made on first use and dropped when pickled, so an
    S3DAM can be shipped to worker processes.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        multipart_threshold: int = 8 * 1024 * 1024,
        multipart_chunksize: int = 8 * 1024 * 1024,
        max_concurrency: int = 4,
        max_attempts: int = 8,
        retry_mode: str = "adaptive",
        check_bucket: bool = True,
    ):
        if not bucket:
            raise DAMError("S3 DAM needs a bucket: use s3://<bucket>/<prefix>")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.retry_mode = retry_mode
        self._client = None
        if check_bucket:
            self.check_bucket()

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _where(self) -> str:
        return f"DAM {self.uri}" + (f" (endpoint {self.endpoint_url})" if self.endpoint_url else "")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            config = Config(
                retries={"max_attempts": self.max_attempts, "mode": self.retry_mode},
                max_pool_connections=max(10, self.max_concurrency * 2),
            )
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region_name, config=config
            )
        return self._client

    def _transfer_config(self) -> TransferConfig:
        # "classic" pins the part size below to what is configured, which the
        # composite checksum check relies on (the CRT client picks its own).
        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            preferred_transfer_client="classic",
        )

    def _full_key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, action: str, exc: Exception) -> DAMError:
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return DAMError(f"{self._where()}: no usable AWS credentials to {action}: {_CREDENTIALS_HINT}")
        if isinstance(exc, EndpointConnectionError):
            return DAMError(f"{self._where()}: cannot reach the S3 endpoint to {action}: check --s3-endpoint / AWS_ENDPOINT_URL and the network")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            # HEAD responses have no body, so head_bucket reports a missing bucket as a bare 404.
            if code == "NoSuchBucket" or (code == "404" and action.startswith("open bucket")):
                return DAMError(f"{self._where()}: bucket {self.bucket!r} does not exist; create it (aws s3 mb s3://{self.bucket}) or fix the DAM URI")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return DAMError(f"{self._where()}: access denied to {action} ({code}); check the credentials ({_CREDENTIALS_HINT}) and the bucket policy")
            return DAMError(f"{self._where()}: S3 error {code} while trying to {action}: {exc}")
        return DAMError(f"{self._where()}: failed to {action}: {exc}")

    def check_bucket(self) -> None:
        """Fail early, naming the fix, when the bucket is missing or unreachable."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self._error(f"open bucket {self.bucket!r}", exc) from exc

    def _extra_args(self, sha256: str, metadata, tags, content_type: str) -> dict:
        meta = {**(metadata or {}), "sha256": sha256}
        for name, value in meta.items():
            if not (str(name).isascii() and str(value).isascii()):
                raise DAMError(f"{self._where()}: metadata {name}={value!r} is not ASCII, which S3 metadata requires")
        args = {"Metadata": {str(k): str(v) for k, v in meta.items()}, "ContentType": content_type}
        if tags:
            if len(tags) > 10:
                raise DAMError(f"{self._where()}: {len(tags)} tags given; S3 allows at most 10 per object")
            for name, value in tags.items():
                if not _TAG_VALUE.match(str(name)) or not _TAG_VALUE.match(str(value)) or not name:
                    raise DAMError(f"{self._where()}: tag {name}={value!r} has characters S3 tags do not allow (letters, digits, spaces, + - = . _ : / @)")
            args["Tagging"] = urlencode({str(k): str(v) for k, v in tags.items()})
        return args

    def _expected_storage_checksum(self, path: Path, sha256: str, size: int, etag: str) -> tuple[str, int]:
        # A multipart upload's ETag ends in "-<parts>"; its checksum is composite over the parts.
        parts = etag.strip('"').rsplit("-", 1)
        if len(parts) == 2 and parts[1].isdigit():
            part_size = ChunksizeAdjuster().adjust_chunksize(self.multipart_chunksize, size)
            return s3_multipart_sha256(path, part_size), -(-size // part_size)
        return _b64_of_hex(sha256), 1

    def put_file(self, key, path, *, sha256=None, metadata=None, tags=None, content_type=None) -> StoredObject:
        source = Path(path)
        sha256 = sha256 or file_sha256(source)
        size = source.stat().st_size
        full_key = self._full_key(key)
        extra = self._extra_args(sha256, metadata, tags, content_type or content_type_for(key))
        extra["ChecksumAlgorithm"] = "SHA256"
        try:
            self.client.upload_file(str(source), self.bucket, full_key, ExtraArgs=extra, Config=self._transfer_config())
            head = self.client.head_object(Bucket=self.bucket, Key=full_key, ChecksumMode="ENABLED")
        except Exception as exc:
            raise self._error(f"upload {source} to {full_key}", exc) from exc
        stored = head.get("ChecksumSHA256")
        if stored is not None:
            expected, parts = self._expected_storage_checksum(source, sha256, size, head.get("ETag", ""))
            if _strip_part_count(stored) != expected:
                raise DAMError(
                    f"{self._where()}: checksum of {full_key} after upload is {stored}, expected {expected} "
                    f"({parts} part(s)); {source} changed during upload or the store corrupted it: archive it again"
                )
        else:
            logger.warning("%s: store returned no SHA-256 checksum for %s; relying on the sha256 metadata", self._where(), full_key)
        return StoredObject(key=key, size=head["ContentLength"], sha256=sha256, storage_checksum=stored, metadata=head.get("Metadata", {}))

    def put_bytes(self, key, data, *, metadata=None, tags=None, content_type=None) -> StoredObject:
        digest = hashlib.sha256(data)
        full_key = self._full_key(key)
        extra = self._extra_args(digest.hexdigest(), metadata, tags, content_type or content_type_for(key))
        try:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=full_key,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
                **extra,
            )
        except Exception as exc:
            raise self._error(f"write {full_key}", exc) from exc
        return StoredObject(
            key=key,
            size=len(data),
            sha256=digest.hexdigest(),
            storage_checksum=response.get("ChecksumSHA256"),
            metadata=extra["Metadata"],
        )

    def get_bytes(self, key: str) -> bytes | None:
        full_key = self._full_key(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=full_key)["Body"].read()
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise self._error(f"read {full_key}", exc) from exc

    def head(self, key: str) -> StoredObject | None:
        full_key = self._full_key(key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full_key, ChecksumMode="ENABLED")
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise self._error(f"read {full_key}", exc) from exc
        metadata = head.get("Metadata", {})
        return StoredObject(
            key=key,
            size=head["ContentLength"],
            sha256=metadata.get("sha256", ""),
            storage_checksum=head.get("ChecksumSHA256"),
            metadata=metadata,
        )


    def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full_key)
        except Exception as exc:
            raise self._error(f"delete {full_key}", exc) from exc


def _is_not_found(exc: Exception) -> bool:
    # A missing key is NoSuchKey on GET and a bare 404 on HEAD; a missing bucket is an error, not "absent".
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404")


def open_dam(uri: str | os.PathLike = "./dam", s3_endpoint: str | None = None, **s3_options: Any) -> DAM:
    """Open a DAM from ``./dam``, ``/abs/path``, ``file:///abs/path`` or ``s3://bucket/prefix``.

    ``s3_endpoint`` is the endpoint URL of an S3-compatible store; left None,
    boto3 uses AWS (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set).
    ``s3_options`` go to :class:`S3DAM`.
    """
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


# --------------------------------------------------------------------------- renders


class RenderAssets(BaseModel):
    """A render's finished deliverables on local disk, ready to archive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    render_id: str
    campaign_id: str
    brief_id: str
    locale: str
    aspect_ratio: str
    model_id: str
    seed: int
    review_status: ReviewStatus
    review: dict[str, Any] | None = None
    """the review tags, kept in the completion record so a skipped render's manifest row can be rebuilt"""
    files: dict[str, Path]
    """extension (no dot, e.g. "mp4", "wav", "jpg", "vtt") -> local file"""

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, Path]) -> dict[str, Path]:
        if not files:
            raise ValueError("files is empty: give at least one extension -> local path (e.g. {'mp4': 'clip.mp4'})")
        for ext, path in files.items():
            if not _EXT.match(ext):
                raise ValueError(f"files key {ext!r} is not a file extension: use lowercase letters or digits, no dot")
            if not path.is_file():
                raise ValueError(f"files[{ext!r}] = {str(path)!r} does not exist or is not a file")
        return files

    @property
    def key_prefix(self) -> str:
        return render_key_prefix(self.campaign_id, self.brief_id, self.locale, self.aspect_ratio)

    def key(self, ext: str) -> str:
        return render_key(self.campaign_id, self.brief_id, self.locale, self.aspect_ratio, self.render_id, ext)

    def object_metadata(self) -> dict[str, str]:
        return {
            "render_id": self.render_id,
            "campaign": self.campaign_id,
            "brief": self.brief_id,
            "locale": self.locale,
            "aspect_ratio": self.aspect_ratio,
            "model": self.model_id,
            "seed": str(self.seed),
        }

    def object_tags(self) -> dict[str, str]:
        return {"review_status": self.review_status, "model": self.model_id, "seed": str(self.seed)}


class ArchiveResult(BaseModel):
    """What archive_render did for one render: one manifest row's worth of DAM facts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    render_id: str
    dam_uri: str
    key_prefix: str
    completion_key: str
    keys: dict[str, str]
    sha256: dict[str, str]
    sizes: dict[str, int]
    bytes_uploaded: int
    skipped: bool


def is_archived(
    dam: DAM, key_prefix: str, render_id: str, expected_sha256: Mapping[str, str] | None = None
) -> dict | None:
    """The render's completion record if the render is completely in the DAM, else None.

    Complete means: the completion record exists, and every object it lists is
    in the DAM with the recorded size and SHA-256 (S3: also the store's own
    checksum). With ``expected_sha256`` (ext -> hex), the record must list
    exactly those extensions with those checksums. Call it before generating a
    render to skip work already done.
    """
    raw = dam.get_bytes(completion_key(key_prefix, render_id))
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        objects: dict[str, dict] = record["objects"]
        recorded = {ext: obj["sha256"] for ext, obj in objects.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        logger.warning("%s: unreadable completion record for %s/%s; the render will be redone", dam.uri, key_prefix, render_id)
        return None
    if record.get("render_id") != render_id:
        return None
    if expected_sha256 is not None and recorded != dict(expected_sha256):
        return None
    for obj in objects.values():
        stored = dam.head(obj["key"])
        if stored is None or stored.size != obj["size"] or stored.sha256 != obj["sha256"]:
            return None
        if obj.get("storage_checksum") and stored.storage_checksum != obj["storage_checksum"]:
            return None
    return record


def archive_render(dam: DAM, render: RenderAssets) -> ArchiveResult:
    """Write a render's files to the DAM, then its completion record; skip it
    when the DAM already holds exactly these files (same SHA-256)."""
    prefix = render.key_prefix
    done_key = completion_key(prefix, render.render_id)
    keys = {ext: render.key(ext) for ext in render.files}
    sha256 = {ext: file_sha256(path) for ext, path in render.files.items()}
    sizes = {ext: path.stat().st_size for ext, path in render.files.items()}

    def result(bytes_uploaded: int, skipped: bool) -> ArchiveResult:
        return ArchiveResult(
            render_id=render.render_id,
            dam_uri=dam.uri,
            key_prefix=prefix,
            completion_key=done_key,
            keys=keys,
            sha256=sha256,
            sizes=sizes,
            bytes_uploaded=bytes_uploaded,
            skipped=skipped,
        )

    if is_archived(dam, prefix, render.render_id, expected_sha256=sha256) is not None:
        return result(0, skipped=True)

    # A record left from an earlier version of this render stays until the new
    # one replaces it; it cannot vouch for a mix of old and new objects, since
    # is_archived checks every object against it.
    metadata, tags = render.object_metadata(), render.object_tags()
    stored: dict[str, StoredObject] = {}
    for ext, path in render.files.items():
        stored[ext] = dam.put_file(keys[ext], path, sha256=sha256[ext], metadata=metadata, tags=tags)

    record = {
        "version": RECORD_VERSION,
        **render.model_dump(mode="json", exclude={"files"}),
        "archived_at": datetime.now(timezone.utc).isoformat(),
        "objects": {
            ext: {"key": obj.key, "size": obj.size, "sha256": obj.sha256, "storage_checksum": obj.storage_checksum}
            for ext, obj in stored.items()
        },
    }
    dam.put_bytes(done_key, json.dumps(record, indent=2, sort_keys=True).encode(), metadata=metadata, tags=tags)
    return result(sum(obj.size for obj in stored.values()), skipped=False)


class ArchiveRenders:
    """Batch stage: encoded deliverables in (column ``assets``: ext -> bytes), DAM objects out.

    Reads the render's identity columns (render_id, campaign_id, brief_id,
    locale, aspect_ratio, model_id, seed), ``review_json`` and ``assets``;
    replaces ``assets`` by ``assets_bytes`` and adds ``archive_json`` (an
    ArchiveResult) or sets ``error``, and ``archive_s`` (seconds spent). Rows that arrive with no assets (a failed
    render) pass through.
    """

    def __init__(self, dam: DAM):
        self.dam = dam

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            assets = dict(row.pop("assets") or [])
            row["assets_bytes"] = sum(len(data) for data in assets.values())
            row["archive_json"] = None
            row["archive_s"] = None
            if not assets:
                continue
            started = time.perf_counter()
            try:
                row["archive_json"] = self._archive(row, assets).model_dump_json()
            except Exception as exc:  # noqa: BLE001 - one render that cannot be archived is one failure row
                row["error"] = f"archive: {exc}"
            row["archive_s"] = time.perf_counter() - started
        schema = batch.schema.remove(batch.schema.get_field_index("assets"))
        for name, arrow_type in (("assets_bytes", pa.int64()), ("archive_json", pa.string()),
                                 ("archive_s", pa.float64())):
            schema = schema.append(pa.field(name, arrow_type))
        return pa.Table.from_pylist(rows, schema=schema)

    def _archive(self, row: dict, assets: dict[str, bytes]) -> ArchiveResult:
        review = json.loads(row["review_json"])
        with tempfile.TemporaryDirectory(prefix="paddock-archive-") as tmp:
            files = {}
            for ext, data in assets.items():
                files[ext] = Path(tmp) / f"{row['render_id']}.{ext}"
                files[ext].write_bytes(data)
            render = RenderAssets(
                render_id=row["render_id"], campaign_id=row["campaign_id"], brief_id=row["brief_id"],
                locale=row["locale"], aspect_ratio=row["aspect_ratio"], model_id=row["model_id"],
                seed=row["seed"], review_status=review["review_status"], review=review, files=files,
            )
            return archive_render(self.dam, render)
