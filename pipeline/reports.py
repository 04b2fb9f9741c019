"""The run's reports: manifest rows, ``manifest.parquet`` and ``contact_sheet.html``,
in the work directory and merged into the DAM. Rows themselves are
:class:`pipeline.manifest.ManifestRow`; this module builds, writes and reads them.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.archive import ArchiveResult
from pipeline.dam import DAM
from pipeline.dam.local import LocalDAM
from pipeline.manifest import MANIFEST_ARROW_SCHEMA, ManifestRow, contact_sheet_html
from pipeline.review import ReviewResult
from schemas.render import RenderRequest

MANIFEST_KEY = "manifest.parquet"
CONTACT_SHEET_KEY = "contact_sheet.html"


def manifest_row(request: RenderRequest, status: str, *, error: str | None = None,
                  review: ReviewResult | None = None, archive: ArchiveResult | None = None,
                  timings: dict[str, float] | None = None, bytes_from_render: int = 0) -> ManifestRow:
    """One render's row: its request, what happened to it, and its review and DAM facts when it has them."""
    row = ManifestRow(
        **request.model_dump(include=set(ManifestRow.model_fields) & set(RenderRequest.model_fields)),
        status=status, error=error, timings_s=timings or {}, bytes_from_render=bytes_from_render,
    )
    if review is not None:
        row = row.model_copy(update={
            "review_status": review.review_status, "review_reasons": review.review_reasons,
            **{f"review_{name}": getattr(review, name) for name in (
                "duration_s", "black_frame_share", "frozen_frame_share", "silence_share", "clipping_share",
                "integrated_lufs", "true_peak_dbtp", "av_offset_ms", "av_offset_confidence")},
        })
    if archive is not None:
        row = row.model_copy(update={"dam_uri": archive.dam_uri, "keys": archive.keys, "sha256": archive.sha256,
                                     "sizes": archive.sizes, "bytes_uploaded": archive.bytes_uploaded})
    return row


def rendered_manifest_row(request: RenderRequest, row: dict) -> ManifestRow:
    """The row of a render this run made, from the archive stage's output row (ArchiveRenders)."""
    review = ReviewResult.model_validate_json(row["review_json"]) if row["review_json"] else None
    archive = ArchiveResult.model_validate_json(row["archive_json"]) if row["archive_json"] else None
    return manifest_row(
        request, "done" if archive is not None else "failed", error=row["error"], review=review, archive=archive,
        timings={**dict(row["timings_s"] or []), **({"archive": row["archive_s"]} if row["archive_s"] is not None else {})},
        bytes_from_render=row["assets_bytes"])


def read_dam_manifest(dam: DAM) -> dict[str, ManifestRow]:
    """The manifest a previous run left in the DAM, by render_id (empty when there is none)."""
    data = dam.get_bytes(MANIFEST_KEY)
    if data is None:
        return {}
    table = pq.read_table(io.BytesIO(data))
    return {row["render_id"]: ManifestRow.model_validate(row) for row in table.to_pylist()}


def _manifest_bytes(rows: list[ManifestRow]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([r.model_dump() for r in rows], schema=MANIFEST_ARROW_SCHEMA), sink)
    return sink.getvalue()


def _put_if_changed(dam: DAM, key: str, data: bytes) -> None:
    """Write ``key`` unless the DAM already holds exactly these bytes (a re-run uploads nothing)."""
    stored = dam.head(key)
    if stored is None or stored.sha256 != hashlib.sha256(data).hexdigest():
        dam.put_bytes(key, data)


def write_reports(rows: list[ManifestRow], dam: DAM, workdir: Path) -> tuple[Path, Path]:
    """This run's manifest.parquet and contact_sheet.html in the work directory; then, last, the
    DAM's: every render the DAM holds, this run's merged into what earlier runs recorded."""
    manifest_path = workdir / "manifest.parquet"
    manifest_path.write_bytes(_manifest_bytes(rows))
    sheet_path = workdir / "contact_sheet.html"
    local_root = dam.root.resolve().as_uri() + "/" if isinstance(dam, LocalDAM) else ""
    sheet_path.write_text(contact_sheet_html(rows, asset_base=local_root), encoding="utf-8")

    merge_into_dam_manifest(dam, rows)
    return manifest_path, sheet_path


def merge_into_dam_manifest(dam: DAM, rows: list[ManifestRow], *, decided: bool = False) -> list[ManifestRow]:
    """Merge ``rows`` into the DAM's manifest.parquet and rewrite its contact_sheet.html (the batch
    jobs, the ad-hoc server and review decisions all merge through here); returns the DAM's rows.
    ``decided``: the rows carry a person's decision, which replaces the one recorded."""
    # Read again: another job may have written the DAM's manifest since this one started.
    previous = read_dam_manifest(dam)
    merged = dict(previous)
    for row in rows:
        # A render skipped here keeps the row of the run that made it.
        if not (row.status == "skipped" and row.render_id in previous):
            merged[row.render_id] = row
        # A person's decision is never overwritten by a run.
        if not decided:
            merged[row.render_id] = merged[row.render_id].keeping_decision_of(previous.get(row.render_id))
    dam_rows = sorted(merged.values(), key=lambda r: (r.campaign_id, r.brief_id, r.locale, r.aspect_ratio,
                                                      r.variant_id, r.take, r.render_id))
    _put_if_changed(dam, MANIFEST_KEY, _manifest_bytes(dam_rows))
    _put_if_changed(dam, CONTACT_SHEET_KEY, contact_sheet_html(dam_rows).encode("utf-8"))
    return dam_rows
