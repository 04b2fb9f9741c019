"""The S3 DAM backend: a bucket + key prefix, or any S3-compatible store via an endpoint URL."""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import os
import random
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError
from s3transfer.utils import ChunksizeAdjuster

from pipeline.dam.base import DAM, DAMError, StoredObject
from pipeline.dam.keys import check_key, file_sha256

logger = logging.getLogger(__name__)

_CONTENT_TYPES = {
    "mp4": "video/mp4",
    "wav": "audio/wav",
    "jpg": "image/jpeg",
    "vtt": "text/vtt",
    "json": "application/json",
    "html": "text/html",
    "parquet": "application/vnd.apache.parquet",
}


def content_type_for(key: str) -> str:
    ext = key.rsplit(".", 1)[-1].lower()
    return _CONTENT_TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


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
        self._presign_client = None
        if check_bucket:
            self.check_bucket()

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _where(self) -> str:
        return f"DAM {self.uri}" + (f" (endpoint {self.endpoint_url})" if self.endpoint_url else "")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"] = state["_presign_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            config = Config(
                retries={"max_attempts": self.max_attempts, "mode": self.retry_mode},
                max_pool_connections=max(10, self.max_concurrency * 2),
                # SigV4 explicitly: botocore may presign with SigV2, which newer regions refuse.
                signature_version="s3v4",
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
        check_key(key)
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
            self._check_tags(tags)
            args["Tagging"] = urlencode({str(k): str(v) for k, v in tags.items()})
        return args

    def _check_tags(self, tags) -> None:
        if len(tags) > 10:
            raise DAMError(f"{self._where()}: {len(tags)} tags given; S3 allows at most 10 per object")
        for name, value in tags.items():
            if not _TAG_VALUE.match(str(name)) or not _TAG_VALUE.match(str(value)) or not name:
                raise DAMError(f"{self._where()}: tag {name}={value!r} has characters S3 tags do not allow (letters, digits, spaces, + - = . _ : / @)")

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

    def head(self, key: str, *, checksum: bool = True) -> StoredObject | None:
        # S3 returns the recorded checksum with the HEAD itself: ``checksum`` costs nothing here.
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

    def update_bytes(self, key, update, *, attempts: int = 30) -> None:
        full_key = self._full_key(key)
        for attempt in range(attempts):
            try:
                current = self.client.get_object(Bucket=self.bucket, Key=full_key)
                data, condition = current["Body"].read(), {"IfMatch": current["ETag"]}
            except Exception as exc:
                if not _is_not_found(exc):
                    raise self._error(f"read {full_key}", exc) from exc
                data, condition = None, {"IfNoneMatch": "*"}
            new = update(data)
            if new is None:
                return
            digest = hashlib.sha256(new)
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=full_key, Body=new, ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
                    **self._extra_args(digest.hexdigest(), None, None, content_type_for(key)), **condition)
                return
            except Exception as exc:
                # 412: another writer got in since the read; 409: a concurrent conditional write; 404: deleted.
                if not (isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
                        "PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404")):
                    raise self._error(f"write {full_key}", exc) from exc
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.random())
        raise DAMError(f"{self._where()}: {full_key} kept changing under {attempts} conditional writes; "
                       "too many jobs write this DAM prefix at once: run fewer, or give them their own prefixes")

    def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full_key)
        except Exception as exc:
            raise self._error(f"delete {full_key}", exc) from exc

    def list_keys(self, prefix: str = "", suffix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        folder = f"{self._full_key(prefix)}/" if prefix else root
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            return sorted(obj["Key"][len(root):] for page in pages for obj in page.get("Contents", [])
                          if obj["Key"].endswith(suffix))
        except Exception as exc:
            raise self._error(f"list {folder or 'the bucket'}", exc) from exc

    def get_tags(self, key: str) -> dict[str, str] | None:
        full_key = self._full_key(key)
        try:
            tag_set = self.client.get_object_tagging(Bucket=self.bucket, Key=full_key)["TagSet"]
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise self._error(f"read the tags of {full_key}", exc) from exc
        return {tag["Key"]: tag["Value"] for tag in tag_set}

    def put_tags(self, key: str, tags) -> None:
        full_key = self._full_key(key)
        self._check_tags(tags)
        tag_set = [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]
        try:
            self.client.put_object_tagging(Bucket=self.bucket, Key=full_key, Tagging={"TagSet": tag_set})
        except Exception as exc:
            raise self._error(f"tag {full_key}", exc) from exc

    def url(self, key: str, expires_s: int) -> str:
        """A presigned (SigV4) GET URL, signed for the bucket's own region (a URL signed for
        another region is refused) and valid ``expires_s`` seconds at most, and never longer
        than the temporary credentials that sign it. Signing is local once the region is known."""
        return self._presigner().generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._full_key(key)},
            ExpiresIn=self._presign_lifetime(expires_s))

    def _presigner(self):
        if self._presign_client is None:
            region = self.region_name
            if region is None:
                try:
                    location = self.client.get_bucket_location(Bucket=self.bucket).get("LocationConstraint")
                except Exception as exc:
                    raise self._error(f"find the region of bucket {self.bucket!r}", exc) from exc
                region = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)
            self._presign_client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=region,
                config=Config(signature_version="s3v4"))
        return self._presign_client

    def _presign_lifetime(self, expires_s: int) -> int:
        credentials = self._presigner()._request_signer._credentials
        expiry = getattr(credentials, "_expiry_time", None)  # RefreshableCredentials (roles, SSO, STS)
        if expiry is None:
            return expires_s
        left = int((expiry - datetime.now(timezone.utc)).total_seconds())
        return max(1, min(expires_s, left))


def _is_not_found(exc: Exception) -> bool:
    # A missing key is NoSuchKey on GET and a bare 404 on HEAD; a missing bucket is an error, not "absent".
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404")

