"""Archive stage: write a render's deliverables to the DAM, idempotently.

The DAM itself (interface, backends, key layout) is :mod:`pipeline.dam`; this
module holds what a render's objects mean together. A render is written assets
first, completion record (``.done.json``) last. It counts as archived only when
its completion record exists and every object the record lists is in the DAM
with the recorded SHA-256, so a render cut off half-way never looks done and is
redone on the next run. :class:`CompletionRecord` is that record, and
:func:`find_archived` the one way the jobs and the server ask for it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from pipeline.dam import DAM, StoredObject
from pipeline.dam.keys import EXTENSION, completion_key, file_sha256, render_key, render_key_prefix
from pipeline.errors import describe_validation_error
from pipeline.fingerprint import DeliveryFingerprint, ModelFingerprint, delivery_fingerprint
from pipeline.mux import ChannelProfile
from pipeline.render import RENDERED_SCHEMA
from pipeline.review import ReviewResult, ReviewStatus
from schemas.brief import MAIN_VARIANT_ID
from schemas.render import RenderRequest

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


class RenderIdentity(BaseModel):
    """Who a render is and how it was reviewed: what its objects' metadata and its completion record carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    render_id: str
    campaign_id: str
    brief_id: str
    locale: str
    aspect_ratio: str
    model_id: str
    seed: int
    variant_id: str = MAIN_VARIANT_ID
    take: int = 0
    review_status: ReviewStatus
    review: ReviewResult | None = None
    """the review tags, kept in the completion record so a skipped render's manifest row can be rebuilt"""
    request: RenderRequest | None = None
    """the whole request, so that a manifest can be rebuilt from the completion records alone"""
    fingerprint: DeliveryFingerprint | None = None
    """what made the files besides the request (pipeline/fingerprint.py); None: made before fingerprints"""


class RenderAssets(RenderIdentity):
    """A render's finished deliverables on local disk, ready to archive."""

    files: dict[str, Path]
    """extension (no dot, e.g. "mp4", "wav", "jpg", "vtt") -> local file"""

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, Path]) -> dict[str, Path]:
        if not files:
            raise ValueError("files is empty: give at least one extension -> local path (e.g. {'mp4': 'clip.mp4'})")
        for ext, path in files.items():
            if not EXTENSION.match(ext):
                raise ValueError(f"files key {ext!r} is not a file extension: use lowercase letters or digits, no dot")
            if not path.is_file():
                raise ValueError(f"files[{ext!r}] = {str(path)!r} does not exist or is not a file")
        return files

    @property
    def key_prefix(self) -> str:
        return render_key_prefix(self.campaign_id, self.brief_id, self.locale, self.aspect_ratio, self.variant_id)

    def key(self, ext: str) -> str:
        return render_key(self.campaign_id, self.brief_id, self.locale, self.aspect_ratio, self.render_id, ext,
                          self.variant_id)

    def object_metadata(self) -> dict[str, str]:
        return {
            "render_id": self.render_id,
            "campaign": self.campaign_id,
            "brief": self.brief_id,
            "locale": self.locale,
            "aspect_ratio": self.aspect_ratio,
            "model": self.model_id,
            "seed": str(self.seed),
            "variant": self.variant_id,
            "take": str(self.take),
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


class ArchivedObject(BaseModel):
    """One deliverable as the completion record lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    size: int
    sha256: str
    storage_checksum: str | None = None
    mtime_ns: int | None = None
    """a local DAM's modification time when archived: with the size, what a check that does not
    re-hash compares (S3 objects have their checksum in the HEAD instead)"""


class CompletionRecord(RenderIdentity):
    """The ``.done.json`` a render's archive writes last: who the render is, its
    review, and every object it is made of. The one reader and writer of that file."""

    version: int = RECORD_VERSION
    archived_at: datetime
    objects: dict[str, ArchivedObject]

    @property
    def keys(self) -> dict[str, str]:
        return {ext: obj.key for ext, obj in self.objects.items()}

    @property
    def sha256(self) -> dict[str, str]:
        return {ext: obj.sha256 for ext, obj in self.objects.items()}

    @property
    def sizes(self) -> dict[str, int]:
        return {ext: obj.size for ext, obj in self.objects.items()}


def _record_prefixes(request: RenderRequest) -> list[str]:
    # A render of the brief's own variant may sit in the layout before variants (no variant segment).
    where = (request.campaign_id, request.brief_id, request.locale, request.aspect_ratio)
    prefixes = [render_key_prefix(*where, request.variant_id)]
    return prefixes + [render_key_prefix(*where, variant_id=None)] if request.variant_id == MAIN_VARIANT_ID else prefixes


def find_archived(dam: DAM, request: RenderRequest, *, verify: bool = True) -> CompletionRecord | None:
    """The completion record of a planned render a previous run (or the server) finished, else None."""
    for prefix in _record_prefixes(request):
        record = is_archived(dam, prefix, request.render_id, verify=verify)
        if record is not None:
            return record
    return None


def find_record(dam: DAM, request: RenderRequest) -> CompletionRecord | None:
    """The planned render's completion record as written, its objects not checked (one GET)."""
    for prefix in _record_prefixes(request):
        record = read_record(dam, completion_key(prefix, request.render_id), request.render_id)
        if record is not None:
            return record
    return None


def read_record(dam: DAM, key: str, render_id: str) -> CompletionRecord | None:
    """The completion record at ``key`` as written, else None (absent, another render's, or one
    that does not read as a :class:`CompletionRecord`: the render is redone)."""
    raw = dam.get_bytes(key)
    if raw is None:
        return None
    try:
        record = CompletionRecord.model_validate_json(raw)
    except ValidationError as exc:
        logger.warning("%s: unreadable completion record %s (%s); the render will be redone",
                       dam.uri, key, describe_validation_error(exc))
        return None
    return record if record.render_id == render_id else None


def objects_intact(dam: DAM, record: CompletionRecord, *, verify: bool = True) -> bool:
    """Whether every object the record lists is in the DAM as recorded. ``verify``: by size and
    SHA-256 (a directory re-hashes each file); otherwise by what the store answers without reading
    the object (a directory: size and mtime)."""
    for obj in record.objects.values():
        stored = dam.head(obj.key, checksum=verify)
        if stored is None or stored.size != obj.size:
            return False
        if stored.sha256 is not None and stored.sha256 != obj.sha256:
            return False
        if stored.sha256 is None and obj.mtime_ns is not None and stored.mtime_ns != obj.mtime_ns:
            return False
        if obj.storage_checksum and stored.storage_checksum != obj.storage_checksum:
            return False
    return True


def is_archived(
    dam: DAM, key_prefix: str, render_id: str, expected_sha256: Mapping[str, str] | None = None,
    *, verify: bool = True,
) -> CompletionRecord | None:
    """The render's completion record if the render is completely in the DAM, else None.

    Complete means: the completion record exists, and every object it lists is
    in the DAM with the recorded size and SHA-256 (S3: also the store's own
    checksum). With ``expected_sha256`` (ext -> hex), the record must list
    exactly those extensions with those checksums. A record that does not
    read as a :class:`CompletionRecord` (cut off, or a review of another
    shape) counts as absent: the render is redone. ``verify``: see :func:`objects_intact`.
    """
    record = read_record(dam, completion_key(key_prefix, render_id), render_id)
    if record is None:
        return None
    if expected_sha256 is not None and record.sha256 != dict(expected_sha256):
        return None
    return record if objects_intact(dam, record, verify=verify) else None


# A person's decision (pipeline/decisions.py) tags every object of the render with these.
REVIEW_STATUS_TAG, REVIEWED_BY_TAG = "review_status", "reviewed_by"


def person_decision_tags(dam: DAM, done_key: str) -> dict[str, str]:
    """The tags a person's decision left on a render's completion record, which a re-archive
    keeps: ``paddock run`` and ``localize`` never overwrite a person's decision."""
    tags = dam.get_tags(done_key) or {}
    return {name: tags[name] for name in (REVIEW_STATUS_TAG, REVIEWED_BY_TAG)} if REVIEWED_BY_TAG in tags else {}


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
    metadata = render.object_metadata()
    tags = {**render.object_tags(), **person_decision_tags(dam, done_key)}
    stored: dict[str, StoredObject] = {}
    for ext, path in render.files.items():
        stored[ext] = dam.put_file(keys[ext], path, sha256=sha256[ext], metadata=metadata, tags=tags)

    record = CompletionRecord(
        **render.model_dump(exclude={"files"}),
        archived_at=datetime.now(timezone.utc),
        objects={ext: ArchivedObject(key=obj.key, size=obj.size, sha256=obj.sha256,
                                     storage_checksum=obj.storage_checksum, mtime_ns=obj.mtime_ns)
                 for ext, obj in stored.items()},
    )
    dam.put_bytes(done_key, json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True).encode(),
                  metadata=metadata, tags=tags)
    return result(sum(obj.size for obj in stored.values()), skipped=False)


SPOOL_ROW = "row.json"


class ArchiveRenders:
    """Batch stage: encoded deliverables in (column ``assets``: ext -> bytes), DAM objects out.

    Reads the render's identity columns (render_id, campaign_id, brief_id,
    locale, aspect_ratio, model_id, seed), ``request_json`` (optional), ``review_json`` and ``assets``;
    replaces ``assets`` by ``assets_bytes`` and adds ``archive_json`` (an
    ArchiveResult) or sets ``error``, and ``archive_s`` (seconds spent). Rows that arrive with no assets (a failed
    render) pass through.

    With ``spool_dir``, a render's files wait in ``<spool_dir>/<render_id>/`` until they are
    archived (its row, written last, in ``row.json``): a render the DAM refused after every
    retry is not made again; the next run archives it from there (:func:`spooled_renders`).
    """

    def __init__(self, dam: DAM, made_with: ModelFingerprint | None = None, profile: ChannelProfile | None = None,
                 spool_dir: Path | None = None, hold: bool = False):
        # With made_with and profile, each completion record carries the render's delivery fingerprint.
        # hold (--deliver best): renders only wait in the spool (column held); the job archives the best take.
        self.dam = dam
        self.made_with = made_with
        self.profile = profile
        self.spool_dir = spool_dir
        self.hold = hold and spool_dir is not None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            assets = dict(row.pop("assets") or [])
            row["assets_bytes"] = sum(len(data) for data in assets.values())
            row["archive_json"] = None
            row["archive_s"] = None
            row["held"] = False
            if not assets:
                continue
            started = time.perf_counter()
            try:
                if self.hold:
                    self._spool(self.spool_dir / row["render_id"], row, assets)
                    row["held"] = True
                else:
                    row["archive_json"] = self._archive(row, assets).model_dump_json()
            except Exception as exc:  # noqa: BLE001 - one render that cannot be archived is one failure row
                kept = f"; its files wait in {self.spool_dir / row['render_id']} for the next run" if self.spool_dir else ""
                row["error"] = f"archive: {exc}{kept}"
            row["archive_s"] = time.perf_counter() - started
        schema = batch.schema.remove(batch.schema.get_field_index("assets"))
        for name, arrow_type in (("assets_bytes", pa.int64()), ("archive_json", pa.string()),
                                 ("archive_s", pa.float64()), ("held", pa.bool_())):
            schema = schema.append(pa.field(name, arrow_type))
        return pa.Table.from_pylist(rows, schema=schema)

    def _archive(self, row: dict, assets: dict[str, bytes]) -> ArchiveResult:
        if self.spool_dir is None:
            with tempfile.TemporaryDirectory(prefix="paddock-archive-") as tmp:
                return self._archive_from(Path(tmp), row, assets)
        folder = self.spool_dir / row["render_id"]
        result = self._archive_from(folder, row, assets)
        shutil.rmtree(folder, ignore_errors=True)
        return result

    def _fingerprint(self, request: RenderRequest | None) -> DeliveryFingerprint | None:
        if request is None or self.made_with is None or self.profile is None:
            return None
        return delivery_fingerprint(self.made_with, self.profile, request)

    def _spool(self, folder: Path, row: dict, assets: dict[str, bytes]) -> dict[str, Path]:
        """The render's files in ``folder``; in the spool, its row last (row.json: it is complete)."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for ext, data in assets.items():
            files[ext] = folder / f"{row['render_id']}.{ext}"
            files[ext].write_bytes(data)
        if self.spool_dir is not None:
            request = RenderRequest.model_validate_json(row["request_json"]) if row.get("request_json") else None
            fingerprint = self._fingerprint(request)
            spooled = {k: v for k, v in row.items() if k in RENDERED_SCHEMA.names and k != "assets"}
            spooled["fingerprint"] = fingerprint.model_dump(mode="json") if fingerprint else None
            (folder / SPOOL_ROW).write_text(json.dumps(spooled, default=str))
        return files

    def _archive_from(self, folder: Path, row: dict, assets: dict[str, bytes]) -> ArchiveResult:
        review = ReviewResult.model_validate_json(row["review_json"])
        request = RenderRequest.model_validate_json(row["request_json"]) if row.get("request_json") else None
        fingerprint = self._fingerprint(request)
        files = self._spool(folder, row, assets)
        render = RenderAssets(
            render_id=row["render_id"], campaign_id=row["campaign_id"], brief_id=row["brief_id"],
            locale=row["locale"], aspect_ratio=row["aspect_ratio"], model_id=row["model_id"],
            seed=row["seed"], variant_id=row["variant_id"], take=row["take"],
            review_status=review.review_status, review=review, files=files, request=request, fingerprint=fingerprint,
        )
        return archive_render(self.dam, render)


def spooled_renders(spool_dir: Path) -> dict[str, tuple[pa.Table, DeliveryFingerprint | None]]:
    """render_id -> (its row as RenderClips gave it, assets included; the fingerprint it was
    made under) for every render that waits in the spool; a folder cut off before its
    row.json was written is not one."""
    found = {}
    for row_path in sorted(spool_dir.glob(f"*/{SPOOL_ROW}")) if spool_dir.is_dir() else []:
        try:
            row = json.loads(row_path.read_text())
            fingerprint = DeliveryFingerprint.model_validate(row.pop("fingerprint")) if row.get("fingerprint") else None
        except (OSError, ValueError, ValidationError):
            continue
        assets = [(path.suffix[1:], path.read_bytes()) for path in sorted(row_path.parent.iterdir())
                  if path.name.startswith(f"{row['render_id']}.")]
        row["assets"] = assets
        row["timings_s"] = [tuple(pair) for pair in row.get("timings_s") or []]
        found[row["render_id"]] = (pa.Table.from_pylist([row], schema=RENDERED_SCHEMA), fingerprint)
    return found
