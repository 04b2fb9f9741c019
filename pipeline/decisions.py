"""A person's review decisions: ``approved``, ``rejected`` or ``retake``, kept in the DAM.

A decision (:func:`decide`) is written to the DAM, never only to memory:

- every object of the render (its deliverables and its completion record) gets the tags
  ``review_status`` (approved / rejected) and ``reviewed_by``; a re-archive keeps them
  (:func:`pipeline.archive.person_decision_tags`);
- an append-only decision log per render: one JSON object per decision under
  ``<render folder>/<render_id>.decisions/`` (who, when, decision, note, status before);
  nothing there is ever rewritten;
- the DAM manifest row's review fields (``review_decision``, ``reviewed_by``, ``reviewed_at``,
  ``review_note``; approved and rejected replace ``review_status``), which ``paddock run`` and
  ``localize`` keep (:meth:`ManifestRow.keeping_decision_of`);
- an OpenLineage run (job type ``REVIEW_DECISION``).

``retake`` changes no tag and no status: the caller queues the same request with the next
unused take (:func:`next_take`), whose clip joins the same group.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.archive import REVIEW_STATUS_TAG, REVIEWED_BY_TAG
from pipeline.dam import DAM
from pipeline.dam.keys import completion_key, render_key_prefix
from pipeline.lineage import JobType, LineageConfig, LineageRun, dam_dataset
from pipeline.manifest import ManifestRow
from pipeline.reports import merge_into_dam_manifest, read_dam_manifest

DecisionName = Literal["approved", "rejected", "retake"]
MAX_NOTE_CHARS = 2000


class DecisionRequest(BaseModel):
    """The body of ``POST /v1/renders/{render_id}/review``."""

    model_config = ConfigDict(extra="forbid")

    decision: DecisionName
    note: str = Field("", max_length=MAX_NOTE_CHARS, description="why; shown to the team and kept in the log")


class DecisionEntry(BaseModel):
    """One line of a render's decision log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    render_id: str
    decision: DecisionName
    note: str
    reviewed_by: str
    decided_at: datetime
    status_before: str | None = Field(description="the review status before this decision")
    retake_render_id: str | None = Field(None, description="retake: the render queued for the next take")


class UnknownRender(LookupError):
    """No row of the DAM's manifest has this render id."""


def row_key_prefix(row: ManifestRow) -> str:
    return render_key_prefix(row.campaign_id, row.brief_id, row.locale, row.aspect_ratio)


def decision_log_prefix(key_prefix: str, render_id: str) -> str:
    return f"{key_prefix}/{render_id}.decisions"


def read_decisions(dam: DAM, row: ManifestRow) -> list[DecisionEntry]:
    """The render's decision log, oldest first."""
    keys = dam.list_keys(decision_log_prefix(row_key_prefix(row), row.render_id))
    return [DecisionEntry.model_validate_json(dam.get_bytes(key)) for key in keys if key.endswith(".json")]


def _append(dam: DAM, row: ManifestRow, entry: DecisionEntry) -> str:
    # A time-ordered, unique name: entries sort oldest first and two reviewers never collide.
    key = (f"{decision_log_prefix(row_key_prefix(row), row.render_id)}/"
           f"{entry.decided_at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}.json")
    dam.put_bytes(key, entry.model_dump_json(indent=2).encode())
    return key


def next_take(rows: list[ManifestRow], row: ManifestRow) -> int:
    """The first take no render of the row's group (campaign, brief, variant, locale, aspect) uses."""
    group = (row.campaign_id, row.brief_id, row.variant_id, row.locale, row.aspect_ratio)
    return 1 + max(r.take for r in rows if (r.campaign_id, r.brief_id, r.variant_id, r.locale, r.aspect_ratio) == group)


def find_row(dam: DAM, render_id: str) -> ManifestRow:
    row = read_dam_manifest(dam).get(render_id)
    if row is None:
        raise UnknownRender(f"no render {render_id!r} in the manifest of {dam.uri}")
    return row


def decide(dam: DAM, render_id: str, body: DecisionRequest, reviewer: str, *, lineage: LineageConfig,
           retake_render_id: str | None = None) -> tuple[DecisionEntry, ManifestRow]:
    """Record a person's decision on a render of the DAM's manifest (see the module docstring).
    Raises :class:`UnknownRender` when the manifest has no such render."""
    row = find_row(dam, render_id)
    entry = DecisionEntry(render_id=render_id, decision=body.decision, note=body.note, reviewed_by=reviewer,
                          decided_at=datetime.now(timezone.utc), status_before=row.review_status,
                          retake_render_id=retake_render_id)
    with LineageRun(lineage, JobType.REVIEW_DECISION, inputs=[dam_dataset(dam.uri)],
                    outputs=[dam_dataset(dam.uri, file_count=len(row.keys) + 1)]):
        if body.decision != "retake":
            prefix = row_key_prefix(row)
            for key in [*row.keys.values(), completion_key(prefix, render_id)]:
                tags = dam.get_tags(key)
                if tags is not None:
                    dam.put_tags(key, {**tags, REVIEW_STATUS_TAG: body.decision, REVIEWED_BY_TAG: reviewer})
        _append(dam, row, entry)
        decided = row.model_copy(update={
            "review_decision": body.decision, "reviewed_by": reviewer, "reviewed_at": entry.decided_at.isoformat(),
            "review_note": body.note or None,
            **({"review_status": body.decision} if body.decision != "retake" else {})})
        merge_into_dam_manifest(dam, [decided], decided=True)
    return entry, decided

