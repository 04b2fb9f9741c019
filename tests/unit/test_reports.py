"""The DAM's reports at scale: manifest.parquet in one row group per campaign, read one campaign
at a time, and the paged contact sheet whose links resolve in a local DAM and in the work directory."""

from __future__ import annotations

import io
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

import pipeline.manifest
from pipeline.dam.local import LocalDAM
from pipeline.manifest import MANIFEST_ARROW_SCHEMA, ManifestRow
from pipeline.reports import (CAMPAIGN_INDEX_KEY, MANIFEST_KEY, _manifest_bytes, merge_into_dam_manifest,
                              read_campaign_manifest, read_dam_manifest, write_reports)

ROW = {"row_index": 0, "locale": "en-US", "language": "English", "aspect_ratio": "16:9", "resolution": "256p",
       "width": 448, "height": 256, "duration_s": 2, "seed": 1, "model_id": "tiny", "status": "done"}


def row(render_id: str, campaign: str, brief: str, **update) -> ManifestRow:
    keys = {"mp4": f"campaign={campaign}/brief={brief}/{render_id}.mp4",
            "jpg": f"campaign={campaign}/brief={brief}/{render_id}.jpg"}
    return ManifestRow(render_id=render_id, campaign_id=campaign, brief_id=brief, **{**ROW, "keys": keys, **update})


def mixed_rows() -> list[ManifestRow]:
    # Campaigns interleaved, as a run over several campaigns records them.
    return [row(f"r{i}", ("beta", "alpha", "gamma")[i % 3], f"b{i % 2}", take=i) for i in range(9)]


def test_manifest_has_one_row_group_per_campaign_in_campaign_order_keeping_the_order_inside():
    rows = mixed_rows()
    manifest = pq.ParquetFile(io.BytesIO(_manifest_bytes(rows)))
    assert manifest.metadata.num_row_groups == 3
    index = json.loads(manifest.metadata.metadata[CAMPAIGN_INDEX_KEY.encode()])
    assert index == {"alpha": [0], "beta": [1], "gamma": [2]}
    for campaign, (group,) in index.items():
        stats = manifest.metadata.row_group(group).column(manifest.schema_arrow.get_field_index("campaign_id")).statistics
        assert (stats.min, stats.max) == (campaign, campaign)
        ids = manifest.read_row_group(group).column("render_id").to_pylist()
        assert ids == [r.render_id for r in rows if r.campaign_id == campaign]  # the order given, within the campaign


def test_one_campaign_reader_decodes_only_that_campaigns_row_group(tmp_path, monkeypatch):
    dam = LocalDAM(tmp_path / "dam")
    merge_into_dam_manifest(dam, mixed_rows())
    everything = read_dam_manifest(dam)
    assert pq.ParquetFile(tmp_path / "dam" / MANIFEST_KEY).metadata.num_row_groups == 3

    read_groups: list[list[int]] = []
    real = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *args, **kwargs):
        read_groups.append(list(row_groups))
        return real(self, row_groups, *args, **kwargs)

    def whole_file(self, *args, **kwargs):
        raise AssertionError("read the whole manifest for one campaign")

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", whole_file)
    beta = read_campaign_manifest(dam, "beta")
    assert beta == {k: r for k, r in everything.items() if r.campaign_id == "beta"}
    assert sorted(beta) == ["r0", "r3", "r6"]
    assert read_groups == [[1]]  # beta sorts second: group 1 alone
    assert read_campaign_manifest(dam, "nowhere") == {}


def test_a_manifest_written_before_row_groups_still_reads_and_the_next_merge_groups_it(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    rows = mixed_rows()
    old = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([r.model_dump() for r in rows], schema=MANIFEST_ARROW_SCHEMA), old)
    dam.put_bytes(MANIFEST_KEY, old.getvalue())
    assert pq.ParquetFile(tmp_path / "dam" / MANIFEST_KEY).metadata.num_row_groups == 1

    assert set(read_dam_manifest(dam)) == {r.render_id for r in rows}
    assert set(read_campaign_manifest(dam, "gamma")) == {"r2", "r5", "r8"}
    merge_into_dam_manifest(dam, [])
    assert pq.ParquetFile(tmp_path / "dam" / MANIFEST_KEY).metadata.num_row_groups == 3
    assert set(read_campaign_manifest(dam, "gamma")) == {"r2", "r5", "r8"}


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (attribute, value)

    def handle_starttag(self, tag, attrs):
        self.links += [(name, value) for name, value in attrs if name in ("href", "src", "poster")]


def links_of(page: Path) -> list[tuple[str, str]]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.links


def resolve(page: Path, link: str) -> Path:
    """A link as the browser showing ``page`` resolves it: a file:// URL, or relative to the page's folder."""
    parsed = urlparse(link)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else (page.parent / unquote(link)).resolve()


def crawl(index: Path) -> dict[Path, list[str]]:
    """Every page reachable from the index, with the clips (mp4 links) it shows; fails on a broken link."""
    pages, todo = {}, [index.resolve()]
    while todo:
        page = todo.pop()
        if page in pages:
            continue
        pages[page] = []
        for attribute, link in links_of(page):
            target = resolve(page, link)
            assert target.is_file(), f"{page}: {attribute}={link!r} -> {target} is missing"
            if target.suffix == ".html":
                todo.append(target)
            elif target.suffix == ".mp4":
                pages[page].append(target.stem)
    return pages


def test_pages_split_per_brief_beyond_the_limit_and_every_link_resolves_in_the_dam_and_the_workdir(
        tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.manifest, "SHEET_PAGE_RENDERS", 4)
    dam = LocalDAM(tmp_path / "dam")
    big = [row(f"big{i}", "big", f"brief{i % 3}", take=i // 3, review_status="auto_approved") for i in range(7)]
    small = [row("s0", "small", "only", review_status="needs_review"),
             row("s1", "small", "only", status="failed", keys={}, error="boom")]
    for clip in big + small:
        for key in clip.keys.values():
            dam.put_bytes(key, b"media")
    workdir = tmp_path / "work"
    workdir.mkdir()

    _, sheet_path = write_reports(big + small, dam, workdir)

    assert sheet_path == workdir / "contact_sheet.html"
    archived = sorted(r.render_id for r in big + small if r.keys)
    for index in (tmp_path / "dam" / "contact_sheet.html", sheet_path):
        pages = crawl(index)
        shown = sorted(clip for clips in pages.values() for clip in clips)
        assert shown == archived  # every archived render on exactly one page
        folder = index.parent / "contact_sheets"
        assert set(pages) == {index.resolve(), *(p.resolve() for p in [
            folder / "big.html", folder / "small.html", *(folder / "big" / f"brief{i}.html" for i in range(3))])}
        assert pages[(folder / "big.html").resolve()] == []  # beyond the limit: a list of its briefs
        assert sorted(pages[(folder / "big" / "brief1.html").resolve()]) == ["big1", "big4"]
    # In the DAM the links are relative (they hold wherever the DAM is served); the work
    # directory's copy links into the local DAM by file:// URL.
    assert all(not link.startswith("file:") for _, link in links_of(tmp_path / "dam" / "contact_sheets" / "small.html"))
    assert any(link.startswith("file:") for _, link in links_of(workdir / "contact_sheets" / "small.html"))


def test_index_lists_each_campaign_with_counts_by_status_and_review_and_its_link(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    rows = [row("a0", "alpha", "b", review_status="auto_approved"), row("a1", "alpha", "b", review_status="rejected"),
            row("a2", "alpha", "b", status="failed", keys={}), row("z0", "zeta", "b", review_status="auto_approved")]
    merge_into_dam_manifest(dam, rows)
    index = (tmp_path / "dam" / "contact_sheet.html").read_text(encoding="utf-8")
    assert ("<li><a href='contact_sheets/alpha.html'>alpha</a>: 3 renders (2 done, 1 failed); "
            "review: 1 auto_approved, 1 rejected</li>") in index
    assert "<li><a href='contact_sheets/zeta.html'>zeta</a>: 1 renders (1 done); review: 1 auto_approved</li>" in index
    assert index.index("alpha") < index.index("zeta")
    # what the one page showed per render is on the campaign's page now
    page = (tmp_path / "dam" / "contact_sheets" / "alpha.html").read_text(encoding="utf-8")
    assert "<h2>b · main · en-US · 16:9</h2>" in page and "<code>a2</code>" in page and "zeta" not in page


def test_a_merge_that_only_supersedes_rewrites_that_campaigns_page(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    merge_into_dam_manifest(dam, [row("a0", "alpha", "b")])
    page = tmp_path / "dam" / "contact_sheets" / "alpha.html"
    assert "(superseded)" not in page.read_text(encoding="utf-8")
    # The brief was edited: the new plan makes another render, and none of its rows is recorded yet.
    planned = pa.table({"render_id": ["a9"], "campaign_id": ["alpha"], "brief_id": ["b"]})
    merge_into_dam_manifest(dam, [], planned=planned)
    assert read_dam_manifest(dam)["a0"].status == "superseded"
    assert "<h2>b · main · en-US · 16:9 (superseded)</h2>" in page.read_text(encoding="utf-8")
