"""The run's reports: manifest rows, ``manifest.parquet`` and ``contact_sheet.html``,
in the work directory and merged into the DAM. Rows themselves are
:class:`pipeline.manifest.ManifestRow`; this module builds, writes and reads them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.archive import ArchiveResult, CompletionRecord, find_archived
from pydantic import ValidationError

from pipeline.dam import DAM, DAMError
from pipeline.dam.keys import COMPLETION_SUFFIX
from pipeline.dam.local import LocalDAM
from pipeline.manifest import (CONTACT_SHEET_PAGE, MANIFEST_ARROW_SCHEMA, ManifestRow, contact_sheet_pages,
                               mark_best_takes)
from pipeline.fingerprint import DeliveryFingerprint
from pipeline.review import ReviewResult, ReviewThresholds
from pipeline.rerun import review_digest
from schemas.render import RenderRequest

logger = logging.getLogger(__name__)

MANIFEST_KEY = "manifest.parquet"
# The manifest's key-value metadata entry {campaign_id: [row group, ...]}: a reader of one
# campaign finds its groups without decoding the others (a million-render DAM holds many campaigns).
CAMPAIGN_INDEX_KEY = "paddock.campaign_row_groups"


def manifest_row(request: RenderRequest, status: str, *, error: str | None = None,
                  review: ReviewResult | None = None, archive: ArchiveResult | None = None,
                  timings: dict[str, float] | None = None, bytes_from_render: int = 0) -> ManifestRow:
    """One render's row: its request, what happened to it, and its review and DAM facts when it has them."""
    row = ManifestRow(
        **request.model_dump(include=set(ManifestRow.model_fields) & set(RenderRequest.model_fields)),
        model_prompt=request.prompt, status=status, error=error, timings_s=timings or {},
        bytes_from_render=bytes_from_render,
    )
    if review is not None:
        row = row.model_copy(update={
            "review_status": review.review_status, "review_reasons": review.review_reasons,
            **{f"review_{name}": getattr(review, name) for name in (
                "duration_s", "black_frame_share", "frozen_frame_share", "silence_share", "clipping_share",
                "integrated_lufs", "true_peak_dbtp", "av_offset_ms", "av_offset_confidence", "quality_score",
                "voiceover_correlation")},
        })
    if archive is not None:
        row = row.model_copy(update={"dam_uri": archive.dam_uri, "keys": archive.keys, "sha256": archive.sha256,
                                     "sizes": archive.sizes, "bytes_uploaded": archive.bytes_uploaded})
    return row


def rendered_manifest_row(request: RenderRequest, row: dict, fingerprint: DeliveryFingerprint | None = None,
                          thresholds: ReviewThresholds | None = None) -> ManifestRow:
    """The row of a render this run made, from the archive stage's output row (ArchiveRenders);
    one archived under ``fingerprint`` with ``thresholds`` keeps their digests for the skip check."""
    review = ReviewResult.model_validate_json(row["review_json"]) if row["review_json"] else None
    archive = ArchiveResult.model_validate_json(row["archive_json"]) if row["archive_json"] else None
    status = "done" if archive is not None else "held" if row.get("held") else "failed"
    made = manifest_row(
        request, status, error=row["error"], review=review, archive=archive,
        timings={**dict(row["timings_s"] or []), **({"archive": row["archive_s"]} if row["archive_s"] is not None else {})},
        bytes_from_render=row["assets_bytes"]).model_copy(update={"frame_fit": row.get("frame_fit")})
    if archive is None or fingerprint is None or thresholds is None:
        return made
    return made.model_copy(update={"fingerprint": fingerprint.digest(),
                                   "review_digest": review_digest(request.forbidden_terms, thresholds)})


# A kept render's row: the request's fields now, the rest as the run that made it recorded them.
_RUN_FIELDS = {"status", "error", "timings_s", "bytes_uploaded", "bytes_from_render", "best_take"}
_KEPT_FIELDS = (set(ManifestRow.model_fields) - set(RenderRequest.model_fields) - _RUN_FIELDS) | {"prompt_source"}


def kept_manifest_rows(dam: DAM, requests: list[RenderRequest], records: dict[str, CompletionRecord],
                       thresholds: ReviewThresholds) -> dict[str, ManifestRow]:
    """The "skipped" rows of the renders the skip check kept (pipeline/skipcheck.py): rebuilt
    from the completion record where it was read (so it corrects an earlier "failed" row), else
    from the DAM's manifest row, which the index found done with this run's fingerprint."""
    previous = read_dam_manifest(dam) if requests else {}
    rows = {}
    for request in requests:
        made, record = previous.get(request.render_id), records.get(request.render_id)
        if record is None and made is None:  # the manifest changed since the index read it
            record = find_archived(dam, request, verify=False)
        if record is not None:
            row = archived_manifest_row(request, record, dam.uri).model_copy(update={
                "fingerprint": record.fingerprint.digest() if record.fingerprint else None,
                "review_digest": review_digest(request.forbidden_terms, thresholds)})
            if made is not None and made.model_prompt is not None:  # the prompt it was made with
                row = row.model_copy(update={"model_prompt": made.model_prompt, "prompt_source": made.prompt_source})
        else:
            row = manifest_row(request, "skipped").model_copy(
                update={name: getattr(made, name) for name in _KEPT_FIELDS} if made is not None else {})
        rows[request.render_id] = row
    return rows


def archived_manifest_row(request: RenderRequest, record: CompletionRecord, dam_uri: str,
                          status: str = "skipped") -> ManifestRow:
    """The row of a render the DAM holds complete, rebuilt from its completion record (the truth)."""
    return manifest_row(request, status, review=record.review).model_copy(update={
        "dam_uri": dam_uri, "keys": record.keys, "sha256": record.sha256, "sizes": record.sizes})


def read_dam_manifest(dam: DAM) -> dict[str, ManifestRow]:
    """The manifest a previous run left in the DAM, by render_id (empty when there is none)."""
    return _parse_manifest(dam, dam.get_bytes(MANIFEST_KEY))


def read_campaign_manifest(dam: DAM, campaign_id: str) -> dict[str, ManifestRow]:
    """One campaign's rows of the DAM's manifest, by render_id: only that campaign's row groups
    are decoded (a manifest written before the campaign index is filtered instead)."""
    return _parse_manifest(dam, dam.get_bytes(MANIFEST_KEY), campaign_id)


def _parse_manifest(dam: DAM, data: bytes | None, campaign_id: str | None = None) -> dict[str, ManifestRow]:
    if data is None:
        return {}
    try:
        table = pq.read_table(io.BytesIO(data)) if campaign_id is None else _campaign_table(data, campaign_id)
        return {row["render_id"]: ManifestRow.model_validate(row) for row in table.to_pylist()}
    except (pa.ArrowException, ValidationError, KeyError, TypeError, ValueError) as exc:
        logger.warning("%s/%s is not a paddock manifest (%s); rebuilding it from the completion records",
                       dam.uri, MANIFEST_KEY, str(exc).splitlines()[0][:200])
        rows = rows_from_records(dam)
        return rows if campaign_id is None else {k: r for k, r in rows.items() if r.campaign_id == campaign_id}


def _campaign_table(data: bytes, campaign_id: str) -> pa.Table:
    manifest = pq.ParquetFile(io.BytesIO(data))
    index = (manifest.metadata.metadata or {}).get(CAMPAIGN_INDEX_KEY.encode())
    if index is None:  # written before the index (one row group for every campaign): filter the rows
        table = manifest.read()
        return table.filter(pc.equal(table["campaign_id"], campaign_id))
    groups = json.loads(index).get(campaign_id, [])
    return manifest.read_row_groups(groups) if groups else manifest.schema_arrow.empty_table()


def rows_from_records(dam: DAM) -> dict[str, ManifestRow]:
    """A manifest row for every completion record in the DAM that carries its request."""
    rows, unusable = {}, 0
    for key in dam.list_keys(suffix=COMPLETION_SUFFIX):
        try:
            record = CompletionRecord.model_validate_json(dam.get_bytes(key) or b"")
        except ValidationError:
            record = None
        if record is None or record.request is None:
            unusable += 1  # cut off, or written before records kept their request
            continue
        rows[record.render_id] = archived_manifest_row(record.request, record, dam.uri, status="done")
    if unusable:
        logger.warning("%s: %d completion records could not give a manifest row (unreadable, or written before "
                       "records kept their request); a re-run of their briefs adds them back", dam.uri, unusable)
    return rows


def _manifest_bytes(rows: list[ManifestRow]) -> bytes:
    """The manifest as Parquet, one row group per campaign (rows sorted by campaign, their order
    kept inside one), and in the file's key-value metadata the row groups of each campaign
    (CAMPAIGN_INDEX_KEY), which :func:`read_campaign_manifest` reads alone."""
    by_campaign: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_campaign.setdefault(row.campaign_id, []).append(row)
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, MANIFEST_ARROW_SCHEMA) as writer:
        for members in (by_campaign[campaign] for campaign in sorted(by_campaign)):
            # row_group_size: a campaign beyond Parquet's default 1 Mi rows per group stays one group
            writer.write_table(pa.Table.from_pylist([r.model_dump() for r in members], schema=MANIFEST_ARROW_SCHEMA),
                               row_group_size=len(members))
        if not by_campaign:
            writer.write_table(MANIFEST_ARROW_SCHEMA.empty_table())
        writer.add_key_value_metadata({CAMPAIGN_INDEX_KEY: json.dumps(
            {campaign: [group] for group, campaign in enumerate(sorted(by_campaign))})})
    return sink.getvalue()


def _put_if_changed(dam: DAM, key: str, data: bytes) -> None:
    """Write ``key`` unless the DAM already holds exactly these bytes (a re-run uploads nothing)."""
    stored = dam.head(key)
    if stored is None or stored.sha256 != hashlib.sha256(data).hexdigest():
        dam.put_bytes(key, data)


def merge_manifest(previous: dict[str, ManifestRow], rows: list[ManifestRow],
                   planned: pa.Table | None = None, decided: bool = False) -> list[ManifestRow]:
    """The DAM's rows: ``previous`` with this run's ``rows`` in their place (a skipped row is
    rebuilt from the completion record, so it corrects an earlier "failed" one). With ``planned``
    (this run's whole plan), an earlier row of a planned brief that the plan no longer makes
    (its brief was edited) is marked "superseded"; it stays in the DAM."""
    merged = dict(previous)
    for row in rows:
        earlier = previous.get(row.render_id)
        # A skipped render keeps the row of the run that made it while that row agrees with the
        # record (a re-run then rewrites nothing); a failed or stale earlier row is replaced.
        if row.status == "skipped" and earlier is not None and earlier.status in ("done", "skipped") and (
                _dam_facts(earlier) == _dam_facts(row)):
            continue
        # A person's decision is never overwritten by a run (``decided``: these rows carry a new one).
        merged[row.render_id] = row if decided else row.keeping_decision_of(earlier)
    if planned is not None:
        planned_ids = set(planned.column("render_id").to_pylist())
        planned_briefs = set(zip(planned.column("campaign_id").to_pylist(), planned.column("brief_id").to_pylist()))
        for render_id, row in merged.items():
            if (row.campaign_id, row.brief_id) in planned_briefs and render_id not in planned_ids:
                merged[render_id] = row.model_copy(update={"status": "superseded"})
    return sorted(mark_best_takes(list(merged.values())), key=lambda r: (
        r.campaign_id, r.brief_id, r.locale, r.aspect_ratio, r.variant_id, r.take, r.render_id))


class ManifestMerger:
    """This run's rows, merged into the DAM's manifest as they come (every ``every_rows`` rows
    or ``every_s`` seconds, and by :meth:`merge` at the end or on SIGTERM), so that a driver
    killed after hours of renders leaves a DAM manifest that lists them. Each merge is a
    conditional read-merge-write (DAM.update_bytes): jobs sharing a DAM keep each other's rows."""

    def __init__(self, dam: DAM, planned: pa.Table | None = None, every_rows: int = 8, every_s: float = 60.0):
        self.dam, self.planned, self.every_rows, self.every_s = dam, planned, every_rows, every_s
        self.rows: dict[str, ManifestRow] = {}
        self._unmerged, self._merged_at = 0, time.monotonic()
        self._lock = threading.Lock()
        self.merging = False
        self.exit_after_merge: int | None = None  # a signal that came during a merge: exit once it is written

    def add(self, row: ManifestRow) -> None:
        self.rows[row.render_id] = row
        self._unmerged += 1
        if self._unmerged >= self.every_rows or time.monotonic() - self._merged_at >= self.every_s:
            try:
                self.merge()
            except DAMError as exc:  # the next merge (at the latest the last one, which raises) tries again
                logger.warning("manifest merge deferred: %s", exc)

    def merge(self) -> list[ManifestRow]:
        """Merge now; the DAM's rows as written."""
        with self._lock:
            self.merging = True
            try:
                merged = merge_into_dam_manifest(self.dam, list(self.rows.values()), planned=self.planned)
                self._unmerged, self._merged_at = 0, time.monotonic()
                return merged
            finally:
                self.merging = False
                if self.exit_after_merge is not None:
                    raise SystemExit(128 + self.exit_after_merge)


def _dam_facts(row: ManifestRow) -> tuple:
    return row.keys, row.sha256, row.review_status, row.review_reasons, row.fingerprint, row.review_digest


def write_reports(rows: list[ManifestRow], dam: DAM, workdir: Path,
                  merger: ManifestMerger | None = None) -> tuple[Path, Path]:
    """The DAM's manifest and contact sheet first (every render the DAM holds, this run's
    merged into what earlier runs recorded), then this run's in the work directory."""
    merger = merger or ManifestMerger(dam)
    for row in rows:
        merger.rows[row.render_id] = row
    merger.merge()
    manifest_path = workdir / "manifest.parquet"
    manifest_path.write_bytes(_manifest_bytes(rows))
    local_root = dam.root.resolve().as_uri() + "/" if isinstance(dam, LocalDAM) else ""
    for page, text in contact_sheet_pages(rows, asset_base=local_root).items():
        (workdir / page).parent.mkdir(parents=True, exist_ok=True)
        (workdir / page).write_text(text, encoding="utf-8")
    sheet_path = workdir / CONTACT_SHEET_PAGE
    return manifest_path, sheet_path


def merge_into_dam_manifest(dam: DAM, rows: list[ManifestRow], *, planned: pa.Table | None = None,
                            decided: bool = False) -> list[ManifestRow]:
    """Merge ``rows`` into the DAM's manifest.parquet with a conditional read-merge-write
    (DAM.update_bytes: jobs sharing a DAM keep each other's rows) and rewrite its
    contact_sheet.html; returns the DAM's rows. The batch jobs, the ad-hoc server and review
    decisions all merge through here. ``decided``: the rows carry a person's decision, which
    replaces the one recorded; otherwise a recorded decision is kept."""
    merged: list[ManifestRow] = []

    def update(data: bytes | None) -> bytes | None:
        merged[:] = merge_manifest(_parse_manifest(dam, data), rows, planned, decided=decided)
        new = _manifest_bytes(merged)
        return None if data == new else new  # a re-run uploads nothing

    dam.update_bytes(MANIFEST_KEY, update)
    # The planned campaigns too: a merge that marks rows superseded may carry none of their rows yet.
    touched = {row.campaign_id for row in rows}
    if planned is not None:
        touched |= set(pc.unique(planned.column("campaign_id")).to_pylist())
    for page, text in contact_sheet_pages(merged, campaigns=touched).items():
        _put_if_changed(dam, page, text.encode("utf-8"))
    return merged


@contextmanager
def merge_on_sigterm(merger: ManifestMerger) -> Iterator[None]:
    """SIGTERM (a Ray Job stopped, a pod evicted) merges the rows so far into the DAM's
    manifest before the job ends; a merge under way finishes first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        if merger.merging:
            merger.exit_after_merge = signum
            return
        merger.merge()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
