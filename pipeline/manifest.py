"""The run manifest (one row per render), the reviewers' contact sheet and the
end-of-run summary."""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.arrow import arrow_schema

RenderStatus = Literal["done", "failed", "skipped", "superseded"]
"""done: made and archived in this run; skipped: already complete in the DAM; failed: see `error`;
superseded: kept in the DAM, but a later plan of its brief no longer makes it (the brief was edited)."""


class ManifestRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    render_id: str
    campaign_id: str
    brief_id: str
    row_index: int
    locale: str
    language: str
    aspect_ratio: str
    resolution: str
    width: int
    height: int
    duration_s: int
    seed: int
    variant_id: str = "main"
    take: int = 0
    model_id: str
    model_prompt: str | None = None  # the exact text the model saw
    prompt_source: str | None = None  # template, llm, or "template (fallback: <reason>)"
    status: str
    error: str | None = None
    review_status: str | None = None
    review_reasons: list[str] = []
    review_duration_s: float | None = None
    review_black_frame_share: float | None = None
    review_frozen_frame_share: float | None = None
    review_silence_share: float | None = None
    review_clipping_share: float | None = None
    review_integrated_lufs: float | None = None
    review_true_peak_dbtp: float | None = None
    review_av_offset_ms: float | None = None
    review_av_offset_confidence: float | None = None
    review_quality_score: float | None = None
    best_take: bool = Field(False, description="the highest quality score of its (brief, variant, locale, aspect) group")
    frame_fit: str | None = Field(None, description="exact | dropped_1 | held_1 | held_2: decoded frames vs the request")
    review_voiceover_correlation: float | None = None
    review_decision: str | None = None
    """a person's last decision (approved, rejected, retake; pipeline/decisions.py); approved and rejected
    replace review_status"""
    reviewed_by: str | None = None
    reviewed_at: str | None = None
    """ISO 8601, UTC"""
    review_note: str | None = None
    dam_uri: str | None = None
    keys: dict[str, str] = {}
    sha256: dict[str, str] = {}
    sizes: dict[str, int] = {}
    bytes_uploaded: int = 0
    bytes_from_render: int = 0
    timings_s: dict[str, float] = {}
    fingerprint: str | None = None
    """DeliveryFingerprint.digest() of a render archived by `paddock run`: a re-run's skip check compares
    it without reading the completion record (pipeline/skipcheck.py)"""
    review_digest: str | None = None
    """rerun.review_digest of the forbidden terms and thresholds its review was decided with"""

    @model_validator(mode="before")
    @classmethod
    def _old_layout(cls, data):
        # Manifests written before creative variants had one integer "variant_index": the take.
        if isinstance(data, dict) and "variant_index" in data:
            data = dict(data)
            data.setdefault("take", data.pop("variant_index"))
        return data

    @field_validator("keys", "sha256", "sizes", "timings_s", mode="before")
    @classmethod
    def _from_arrow_map(cls, value):
        # Arrow map columns read back as lists of (key, value) pairs.
        return dict(value) if isinstance(value, list) else value


    def keeping_decision_of(self, previous: ManifestRow | None) -> ManifestRow:
        """This row, with the person's decision an earlier row of the same render carries:
        ``paddock run`` and ``localize`` never overwrite a person's decision."""
        if previous is None or previous.reviewed_by is None or self.reviewed_by is not None:
            return self
        return self.model_copy(update={name: getattr(previous, name) for name in DECISION_FIELDS} | (
            {"review_status": previous.review_status} if previous.review_decision in ("approved", "rejected") else {}))


DECISION_FIELDS = ("review_decision", "reviewed_by", "reviewed_at", "review_note")
MANIFEST_ARROW_SCHEMA = arrow_schema(ManifestRow)


def take_group(row: ManifestRow) -> tuple[str, str, str, str, str]:
    """The takes of one creative request: same brief, variant, locale and aspect, other seeds."""
    return (row.campaign_id, row.brief_id, row.variant_id, row.locale, row.aspect_ratio)


def _best_per_group(rows: list[ManifestRow], statuses: tuple[str, ...]) -> list[ManifestRow]:
    """The row of each take group with the highest quality score (a tie goes to the lower take),
    among the rows in ``statuses`` that were reviewed."""
    best: dict[tuple, ManifestRow] = {}
    for row in rows:
        if row.status in statuses and row.review_quality_score is not None:
            current = best.get(take_group(row))
            if current is None or (row.review_quality_score, -row.take) > (current.review_quality_score, -current.take):
                best[take_group(row)] = row
    return list(best.values())


def mark_best_takes(rows: list[ManifestRow]) -> list[ManifestRow]:
    """Every row with ``best_take`` set on exactly one archived row per take group (none in a
    group with nothing archived)."""
    chosen = {row.render_id for row in _best_per_group([r for r in rows if r.keys], ("done", "skipped"))}
    return [row.model_copy(update={"best_take": row.render_id in chosen}) for row in rows]


def best_held_takes(rows: list[ManifestRow]) -> list[str]:
    """``--deliver best``: the render ids of the held takes (rendered, waiting in the work
    directory's spool) that beat every other take of their group, archived ones included."""
    return [row.render_id for row in _best_per_group(rows, ("held", "done", "skipped")) if row.status == "held"]


def summary_lines(rows: list[ManifestRow]) -> list[str]:
    """A short table: renders by status and review status, then each failure."""
    by_status = Counter(r.status for r in rows)
    by_review = Counter(r.review_status for r in rows if r.review_status)
    lines = [
        f"{'renders':<16}{len(rows):>6}",
        *(f"  {status:<14}{by_status.get(status, 0):>6}" for status in ("done", "skipped", "failed", "superseded")),
        f"{'review':<16}",
        *(f"  {status:<14}{by_review.get(status, 0):>6}" for status in ("auto_approved", "needs_review", "rejected")),
    ]
    for row in rows:
        if row.status == "failed":
            lines.append(f"  failed {row.render_id} ({row.brief_id} {row.locale} {row.aspect_ratio}): {row.error}")
    return lines


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
h2{margin-top:2rem;border-bottom:1px solid #ccc}
.clips{display:flex;flex-wrap:wrap;gap:1rem}
.clip{border:1px solid #ddd;border-radius:6px;padding:.5rem;width:300px}
.clip video{width:100%;max-height:300px;background:#000}
.auto_approved{border-left:6px solid #2a2}.needs_review{border-left:6px solid #e90}
.rejected,.failed{border-left:6px solid #d22}.superseded{opacity:.55}
table{font-size:.8rem;border-collapse:collapse}td{padding:0 .4rem}
.best{box-shadow:0 0 0 3px #36c}.badge{background:#36c;color:#fff;border-radius:4px;padding:0 .3rem;font-size:.75rem}
"""


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def contact_sheet_html(rows: list[ManifestRow], asset_base: str = "") -> str:
    """One page for reviewers: poster, player and tags per clip; the takes of one (brief,
    variant, locale, aspect) side by side, the best take marked.

    ``asset_base`` is prefixed to DAM keys; "" gives links relative to the DAM root,
    where the sheet itself is stored.
    """
    groups: dict[tuple, list[ManifestRow]] = defaultdict(list)
    # Superseded clips come last, apart: a later plan of their brief replaced them.
    for row in sorted(rows, key=lambda r: (r.status == "superseded", *take_group(r), r.take)):
        groups[(*take_group(row), row.status == "superseded")].append(row)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>paddock contact sheet</title>"
             f"<style>{_STYLE}</style></head><body><h1>Contact sheet</h1>"
             f"<p>{esc(' · '.join(line.strip() for line in summary_lines(rows)[:4]))}</p>"]
    for (_, brief_id, variant_id, locale, aspect_ratio, superseded), clips in groups.items():
        apart = " (superseded)" if superseded else ""
        parts.append(f"<h2>{esc(brief_id)} · {esc(variant_id)} · {esc(locale)} · {esc(aspect_ratio)}{apart}</h2>"
                     f"<div class='clips'>")
        for row in clips:
            css = ("superseded" if row.status == "superseded" else row.review_status or row.status) + (
                " best" if row.best_take else "")
            badge = " <span class='badge'>best take</span>" if row.best_take else ""
            parts.append(f"<div class='clip {esc(css)}'><b>take {row.take}</b>{badge}"
                         f"<br><code>{esc(row.render_id)}</code>")
            if "mp4" in row.keys:
                poster = f" poster='{esc(asset_base + row.keys['jpg'])}'" if "jpg" in row.keys else ""
                parts.append(f"<video controls preload='none'{poster} src='{esc(asset_base + row.keys['mp4'])}'>"
                             f"</video>")
            tags = {
                "quality score": row.review_quality_score,
                "status": row.status,
                "review": row.review_status,
                "decided": f"{row.review_decision} by {row.reviewed_by}" if row.reviewed_by else None,
                "reasons": "; ".join(row.review_reasons) or None,
                "error": row.error,
                "duration s": row.review_duration_s,
                "loudness LUFS": row.review_integrated_lufs,
                "true peak dBTP": row.review_true_peak_dbtp,
                "A/V offset ms": row.review_av_offset_ms,
                "black share": row.review_black_frame_share,
                "frozen share": row.review_frozen_frame_share,
                "silence share": row.review_silence_share,
            }
            parts.append("<table>" + "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>"
                                             for k, v in tags.items() if v is not None) + "</table></div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


# One page of a few hundred clips stays usable in a browser; a campaign beyond that gets a page per brief.
SHEET_PAGE_RENDERS = 300
CONTACT_SHEET_PAGE = "contact_sheet.html"
SHEETS_FOLDER = "contact_sheets"


def _index_page(title: str, entries: list[tuple[str, str, list[ManifestRow]]]) -> str:
    esc = html.escape
    items = []
    for href, name, rows in entries:
        counts = Counter(r.status for r in rows)
        reviews = Counter(r.review_status for r in rows if r.review_status)
        items.append(f"<li><a href='{esc(href)}'>{esc(name)}</a>: {len(rows)} renders ("
                     + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + ")"
                     + ("; review: " + ", ".join(f"{n} {esc(status)}" for status, n in sorted(reviews.items()))
                        if reviews else "") + "</li>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{_STYLE}</style>"
            f"</head><body><h1>{esc(title)}</h1><ul>{''.join(items)}</ul></body></html>")


def contact_sheet_pages(rows: list[ManifestRow], asset_base: str = "",
                        campaigns: set[str] | None = None) -> dict[str, str]:
    """The contact sheet as pages, by path relative to where ``contact_sheet.html`` is stored: that
    page, an index of the campaigns; ``contact_sheets/<campaign>.html``, the campaign's clips, or
    beyond SHEET_PAGE_RENDERS renders an index of its briefs, each on
    ``contact_sheets/<campaign>/<brief>.html``. ``campaigns``: only their pages (and the index),
    so a merge rewrites what it changed. ``asset_base`` as in :func:`contact_sheet_html`; ""
    links each page to the DAM root above it."""
    by_campaign: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_campaign[row.campaign_id].append(row)
    pages = {CONTACT_SHEET_PAGE: _index_page("Contact sheet", [
        (f"{SHEETS_FOLDER}/{campaign}.html", campaign, members) for campaign, members in sorted(by_campaign.items())])}
    for campaign, members in by_campaign.items():
        if campaigns is not None and campaign not in campaigns:
            continue
        if len(members) <= SHEET_PAGE_RENDERS:
            pages[f"{SHEETS_FOLDER}/{campaign}.html"] = contact_sheet_html(members, asset_base or "../")
            continue
        briefs: dict[str, list[ManifestRow]] = defaultdict(list)
        for row in members:
            briefs[row.brief_id].append(row)
        pages[f"{SHEETS_FOLDER}/{campaign}.html"] = _index_page(f"Campaign {campaign}", [
            (f"{campaign}/{brief}.html", brief, clips) for brief, clips in sorted(briefs.items())])
        for brief, clips in briefs.items():
            pages[f"{SHEETS_FOLDER}/{campaign}/{brief}.html"] = contact_sheet_html(clips, asset_base or "../../")
    return pages
