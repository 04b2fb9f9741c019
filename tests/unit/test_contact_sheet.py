"""The contact sheet's pages: an index of campaigns, a page per campaign, a page per brief beyond a few hundred."""

from __future__ import annotations

from pipeline.manifest import SHEET_PAGE_RENDERS, ManifestRow, contact_sheet_pages

ROW = {"row_index": 0, "locale": "en-US", "language": "English", "aspect_ratio": "16:9", "resolution": "256p",
       "width": 448, "height": 256, "duration_s": 2, "seed": 1, "model_id": "tiny", "status": "done"}


def rows() -> list[ManifestRow]:
    big = [ManifestRow(render_id=f"r{i}", campaign_id="big", brief_id=f"b{i % 2}", keys={"mp4": f"k{i}.mp4"}, **ROW)
           for i in range(SHEET_PAGE_RENDERS + 1)]
    return big + [ManifestRow(render_id="s", campaign_id="small", brief_id="x", keys={"mp4": "s.mp4"},
                              **{**ROW, "status": "failed"})]


def test_pages_per_campaign_and_per_brief_beyond_the_page_size():
    pages = contact_sheet_pages(rows())
    assert sorted(pages) == ["contact_sheet.html", "contact_sheets/big.html", "contact_sheets/big/b0.html",
                             "contact_sheets/big/b1.html", "contact_sheets/small.html"]
    index = pages["contact_sheet.html"]
    assert f"<a href='contact_sheets/big.html'>big</a>: {SHEET_PAGE_RENDERS + 1} renders" in index
    assert "<a href='contact_sheets/small.html'>small</a>: 1 renders (1 failed)" in index
    assert "<a href='big/b1.html'>b1</a>" in pages["contact_sheets/big.html"]
    # Links climb back to the DAM root the index sits in; clips stay on their brief's page.
    assert "src='../../k0.mp4'" in pages["contact_sheets/big/b0.html"]
    assert "k1.mp4" not in pages["contact_sheets/big/b0.html"]
    assert "src='../s.mp4'" in pages["contact_sheets/small.html"]
    assert "src='file:///dam/s.mp4'" in contact_sheet_pages(rows(), asset_base="file:///dam/")["contact_sheets/small.html"]


def test_a_merge_rewrites_only_the_campaigns_it_touched_and_the_index():
    assert sorted(contact_sheet_pages(rows(), campaigns={"small"})) == ["contact_sheet.html", "contact_sheets/small.html"]
