"""Skip check: which planned renders the DAM already holds, decided from an index, not object by object.

The index is the DAM's manifest, read once (render_id, status, delivery fingerprint digest, review
digest), and one listing of each planned campaign's completion records. A planned render whose
manifest row is done with this run's fingerprint and review digest is skipped without any call of
its own. The decision is :func:`pipeline.rerun.decide_for_record` on the digests, as an Arrow
join: another model part renders again, another profile alone re-delivers, another review digest
re-tags (the record is read then). A render the index holds without digests or not as done (a
manifest row written before the digests, or "failed" by a job that archived the render but died
before its merge; every record of a DAM without a manifest) costs one GET of its record, as does
a listed record the manifest does not hold (what a job killed between its manifest merges leaves:
found, it is not made twice). A render neither listed nor in the manifest is rendered. The
listing is linear in the archived renders: on S3 one call per 1,000 objects, on a local DAM a walk
of their folders (the larger cost there).

Then ``verify``: ``sample`` (the default) checks a random sample of the kept renders' objects by
size and SHA-256 and widens to all of them when any fails; ``full`` checks all; ``none`` trusts
the index. A render that fails is rendered again.
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.archive import CompletionRecord, find_archived, find_record, objects_intact
from pipeline.dam import DAM, DAMError
from pipeline.dam.keys import COMPLETION_SUFFIX, campaign_prefix
from pipeline.fingerprint import DeliveryFingerprint, ModelFingerprint, fingerprint_for
from pipeline.mux import ChannelProfile
from pipeline.reports import MANIFEST_KEY
from pipeline.rerun import RerunAction, decide_for_record, retag, review_digest
from pipeline.review import ReviewThresholds
from schemas.render import RenderRequest

logger = logging.getLogger(__name__)

VerifyMode = Literal["sample", "full", "none"]

# A 1 % sample finds a fault that hit 1 % of a campaign's renders (a lost prefix, a lifecycle
# rule, a bad copy) with 95 % odds at 30,000 renders (1 - 0.99^300) for 3 calls per 100 kept
# renders; at least 8 keeps a small campaign checked nearly whole. A fault found widens to all.
SAMPLE_SHARE = 0.01
SAMPLE_MIN = 8

# Record reads and object checks wait on the store, not the CPU (as the archive stage's uploads).
CHECK_THREADS = 16

_INDEX_SCHEMA = pa.schema([("render_id", pa.string()), ("status", pa.string()), ("fingerprint", pa.string()),
                           ("review_digest", pa.string())])


@dataclass
class ArchiveIndex:
    """What the DAM says it holds, read without touching any render's objects."""

    manifest: pa.Table
    """render_id, status, fingerprint, review_digest of the planned campaigns' manifest rows"""
    listed: set[str]
    """render ids with a completion record under the planned campaigns (one listing each)"""


def load_index(dam: DAM, campaign_ids: list[str]) -> ArchiveIndex:
    """One GET of the manifest and one listing per campaign (S3: one call per 1,000 objects; a
    directory: a walk of the campaign's folders). The listing finds what the manifest cannot: the
    records a killed job wrote after its last merge."""
    data = dam.get_bytes(MANIFEST_KEY)
    manifest = _INDEX_SCHEMA.empty_table()
    if data is not None:
        try:
            manifest = _manifest_index(data, campaign_ids)
        except (pa.ArrowException, KeyError, ValueError) as exc:
            logger.warning("%s/%s is not a paddock manifest (%s); each listed render's record is read instead",
                           dam.uri, MANIFEST_KEY, str(exc).splitlines()[0][:200])
    listed = {key.rsplit("/", 1)[1][:-len(COMPLETION_SUFFIX)] for campaign in campaign_ids
              for key in dam.list_keys(prefix=campaign_prefix(campaign), suffix=COMPLETION_SUFFIX)}
    return ArchiveIndex(manifest, listed)


def _manifest_index(data: bytes, campaign_ids: list[str]) -> pa.Table:
    names = set(pq.read_schema(io.BytesIO(data)).names)
    # Only the planned campaigns' row groups are decoded (reports._manifest_bytes writes one per campaign).
    table = pq.read_table(io.BytesIO(data), filters=[("campaign_id", "in", campaign_ids)],
                          columns=[c for c in ("render_id", "status", "fingerprint", "review_digest") if c in names])
    # Manifests written before fingerprints lack the columns: their renders are looked up once.
    columns = [table[name] if name in names else pa.nulls(table.num_rows, pa.string()) for name in _INDEX_SCHEMA.names]
    return pa.Table.from_arrays(columns, schema=_INDEX_SCHEMA)


def draw_sample(render_ids: list[str], seed: int | None = None) -> list[str]:
    """The renders ``sample`` verifies: max(SAMPLE_MIN, SAMPLE_SHARE of them), drawn with ``seed``
    (None: a fresh draw each run) from the ids in sorted order, so a seed names one sample."""
    count = min(len(render_ids), max(SAMPLE_MIN, math.ceil(SAMPLE_SHARE * len(render_ids))))
    return random.Random(seed).sample(sorted(render_ids), count)


@dataclass
class SkipCheck:
    """What a run does with each planned render, and what deciding it cost."""

    actions: pa.Table
    """render_id, action ("skip", "redeliver" or "render") for every planned render"""
    records: dict[str, CompletionRecord] = field(default_factory=dict)
    """the completion records read (looked-up and re-tagged renders kept), by render_id"""
    from_index: int = 0
    looked_up: int = 0
    retagged: int = 0
    verified: int = 0
    failed: list[str] = field(default_factory=list)
    widened: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)
    """seconds spent on: index (manifest + listing), decide (digests and join), records, verify"""

    def ids(self, action: RerunAction) -> set[str]:
        return set(self.actions.filter(pc.equal(self.actions["action"], action))["render_id"].to_pylist())

    def summary(self, verify: VerifyMode) -> str:
        checked = f"{self.verified} verified ({verify}{', widened to all' if self.widened else ''})"
        return (f"skip check: {self.from_index} kept from the index, {self.looked_up} records read, "
                f"{self.retagged} re-tagged, {checked}, {len(self.failed)} failed and to be made again")


def _planned_digests(planned: pa.Table, made_with: ModelFingerprint, profile: ChannelProfile,
                     thresholds: ReviewThresholds) -> tuple[pa.Table, dict[tuple, DeliveryFingerprint]]:
    """render_id, planned_fingerprint, planned_review: each digest computed once per distinct input
    (resolution and reference image; forbidden terms), joined back onto the plan."""
    reference = pc.fill_null(planned["reference_image_uri"], "")
    terms = pc.fill_null(pc.binary_join(planned["forbidden_terms"], "\x1f"), "")
    keyed = pa.table({"render_id": planned["render_id"], "resolution": planned["resolution"], "reference": reference,
                      "terms": terms})
    made: dict[tuple, DeliveryFingerprint] = {}
    shapes = keyed.group_by(["resolution", "reference"]).aggregate([])
    for resolution, uri in zip(shapes["resolution"].to_pylist(), shapes["reference"].to_pylist()):
        made[(resolution, uri)] = fingerprint_for(made_with, profile, resolution, uri or None)
    shapes = shapes.append_column("planned_fingerprint", pa.array(
        [made[key].digest() for key in zip(shapes["resolution"].to_pylist(), shapes["reference"].to_pylist())],
        pa.string()))
    reviews = keyed.group_by(["terms"]).aggregate([])
    reviews = reviews.append_column("planned_review", pa.array(
        [review_digest(t.split("\x1f") if t else [], thresholds) for t in reviews["terms"].to_pylist()], pa.string()))
    digests = (keyed.join(shapes, keys=["resolution", "reference"]).join(reviews, keys="terms")
               .select(["render_id", "resolution", "reference", "planned_fingerprint", "planned_review"]))
    return digests, made


def _index_actions(digests: pa.Table, index: ArchiveIndex) -> pa.Table:
    """render_id, action: "render", "lookup" (read the record; every re-delivery too), "skip" or
    "retag", decided from the digests as decide_for_record decides from the record."""
    manifest = index.manifest.append_column("indexed", pa.array([True] * index.manifest.num_rows, pa.bool_()))
    joined = digests.join(manifest, keys="render_id", join_type="left outer")
    # Listed, or in the manifest (a row whose record is gone is found by verify, not by the listing).
    listed = pc.or_(pc.fill_null(joined["indexed"], False),
                    pc.is_in(joined["render_id"], value_set=pa.array(list(index.listed), pa.string())))
    recorded, planned = joined["fingerprint"], joined["planned_fingerprint"]
    same = pc.fill_null(pc.equal(planned, recorded), False)
    same_model = pc.fill_null(pc.equal(pc.utf8_slice_codeunits(planned, 0, 16),
                                       pc.utf8_slice_codeunits(recorded, 0, 16)), False)
    same_review = pc.fill_null(pc.equal(joined["planned_review"], joined["review_digest"]), False)
    done = pc.fill_null(pc.is_in(joined["status"], value_set=pa.array(["done", "skipped"])), False)
    undecided = pc.or_(pc.is_null(recorded), pc.invert(done))
    conditions = [pc.invert(listed), undecided, pc.and_(same, same_review), same, same_model]
    action = pc.case_when(pa.StructArray.from_arrays([pa.concat_arrays(c.chunks) if isinstance(c, pa.ChunkedArray)
                                                      else c for c in conditions],
                                                     names=[str(i) for i in range(len(conditions))]),
                          # a re-delivery reads the record first, to know its objects are still there
                          "render", "lookup", "skip", "retag", "lookup", "render")
    return joined.select(["render_id", "resolution", "reference"]).append_column("action", action)


def check_archived(dam: DAM, planned: pa.Table, made_with: ModelFingerprint, profile: ChannelProfile,
                   thresholds: ReviewThresholds, verify: VerifyMode = "sample", seed: int | None = None) -> SkipCheck:
    """The skip check over ``planned`` (RENDER_REQUEST_ARROW_SCHEMA rows): one index read, the
    records of the renders the index cannot decide, then ``verify`` (module docstring)."""
    if planned.num_rows == 0:
        return SkipCheck(pa.table({"render_id": pa.array([], pa.string()), "action": pa.array([], pa.string())}))
    started = time.perf_counter()
    index = load_index(dam, pc.unique(planned["campaign_id"]).to_pylist())
    indexed = time.perf_counter()
    digests, made = _planned_digests(planned, made_with, profile, thresholds)
    decided = _index_actions(digests, index)
    check = SkipCheck(actions=pa.table({}))
    check.timings_s = {"index": indexed - started, "decide": time.perf_counter() - indexed}
    changed: dict[str, str] = {}  # the few renders whose action the records or the verify decide

    def rows_of(*wanted: str) -> pa.Table:
        return decided.filter(pc.is_in(decided["action"], value_set=pa.array(wanted, pa.string())))

    # The renders the index cannot decide alone: their records, then the decision and any re-tag.
    reading = rows_of("lookup", "retag")
    if reading.num_rows:
        fingerprint_of = {render_id: made[(resolution, uri)] for render_id, resolution, uri in zip(
            *(reading[name].to_pylist() for name in ("render_id", "resolution", "reference")))}
        requests = requests_of(planned, fingerprint_of)
        check.retagged = pc.sum(pc.equal(reading["action"], "retag")).as_py()
        check.looked_up = reading.num_rows - check.retagged

        def read(render_id: str) -> tuple[str, str, CompletionRecord | None]:
            record = find_record(dam, requests[render_id])
            decision = decide_for_record(record, fingerprint_of[render_id])
            if decision.action == "redeliver" and not objects_intact(dam, record, verify=False):
                return render_id, "render", None  # its frames or stem are gone: nothing to re-deliver from
            if decision.action != "skip":
                return render_id, decision.action, None
            try:
                return render_id, "skip", retag(dam, record, requests[render_id], thresholds)
            except DAMError as exc:  # an object gone since it was archived: made again
                logger.warning("%s: %s cannot be re-tagged (%s); it will be made again", dam.uri, render_id, exc)
                return render_id, "render", None

        with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
            for render_id, action, record in pool.map(read, list(fingerprint_of)):
                changed[render_id] = action
                if record is not None:
                    check.records[render_id] = record

    check.timings_s["records"] = time.perf_counter() - started - sum(check.timings_s.values())
    from_index = rows_of("skip")["render_id"].to_pylist()
    check.from_index = len(from_index)
    kept = from_index + [render_id for render_id, action in changed.items() if action == "skip"]
    verifying = time.perf_counter()
    _verify(dam, planned, kept, verify, seed, check, changed)
    check.timings_s["verify"] = time.perf_counter() - verifying
    unchanged = decided.filter(pc.invert(pc.is_in(decided["render_id"], value_set=pa.array(list(changed), pa.string()))))
    check.actions = pa.concat_tables([
        unchanged.select(["render_id", "action"]),
        pa.table({"render_id": pa.array(list(changed), pa.string()), "action": pa.array(list(changed.values()), pa.string())})])
    return check


# Rows validated to RenderRequests at a time: the plan stays Arrow, a batch of objects is transient.
VALIDATE_ROWS = 10_000


def requests_of(planned: pa.Table, render_ids) -> dict[str, RenderRequest]:
    """The planned rows of ``render_ids`` as RenderRequests, in plan order (the rest stay Arrow)."""
    rows = planned.filter(pc.is_in(planned["render_id"], value_set=pa.array(list(render_ids), pa.string())))
    return {request.render_id: request for batch in rows.to_batches(VALIDATE_ROWS)
            for request in (RenderRequest.model_validate(row) for row in batch.to_pylist())}


def selected_requests(planned: pa.Table, select) -> pa.Table:
    """The planned rows ``select(request)`` keeps (the localization job's new locales), validated in batches."""
    keep = [select(RenderRequest.model_validate(row)) for batch in planned.to_batches(VALIDATE_ROWS)
            for row in batch.to_pylist()]
    return planned.filter(pa.array(keep, pa.bool_()))


def _verify(dam: DAM, planned: pa.Table, kept: list[str], verify: VerifyMode, seed: int | None,
            check: SkipCheck, actions: dict[str, str]) -> None:
    """Check the kept renders' objects by size and SHA-256 (all, a sample widened on a failure,
    or none); one that fails is made again."""
    if verify == "none" or not kept:
        return
    first = kept if verify == "full" else draw_sample(kept, seed)

    def intact(request: RenderRequest) -> bool:
        return find_archived(dam, request, verify=True) is not None

    def run(render_ids: list[str]) -> None:
        for start in range(0, len(render_ids), VALIDATE_ROWS):  # a full check of 300,000: in batches
            requests = list(requests_of(planned, render_ids[start:start + VALIDATE_ROWS]).values())
            with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
                for request, ok in zip(requests, pool.map(intact, requests)):
                    check.verified += 1
                    if not ok:
                        check.failed.append(request.render_id)
                        actions[request.render_id] = "render"
                        check.records.pop(request.render_id, None)

    run(first)
    if check.failed and verify == "sample":
        check.widened = True
        sampled = set(first)
        run([render_id for render_id in kept if render_id not in sampled])
    if check.failed:
        logger.warning("%s: %d archived renders are no longer as archived (an object deleted or changed), "
                       "e.g. %s; they will be made again", dam.uri, len(check.failed), check.failed[0])
