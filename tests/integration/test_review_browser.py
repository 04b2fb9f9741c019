"""The review page in a real browser: Debian's chromium and chromium-driver, headless, driven
with selenium, against `paddock serve` on loopback (tiny model, real ffmpeg, a local DAM);
then `paddock review --dam` alone over the same DAM. Screenshots go to the test's tmp dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import ROOT, require_tool
from test_serve import brief, free_port

from jobs.serve_app import ServeConfig, run_server
from pipeline.dam import open_dam
from pipeline.decisions import read_decisions
from pipeline.reports import read_dam_manifest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKENS = "alice:tok-a-5151,rita:tok-r-6262:review"
WAIT_S = 240


def selenium_webdriver():
    try:
        from selenium import webdriver
    except ImportError:
        require_tool(None, "selenium (pip, in the dev extra that make test installs)")
    return webdriver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require_tool(CHROMIUM, "chromium (apt: chromium)")
    require_tool(CHROMEDRIVER, "chromedriver (apt: chromium-driver)")
    webdriver = selenium_webdriver()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def rendered(ray_session, tmp_path_factory):
    """`paddock serve` with two renders of one brief (16:9 and 9:16) done."""
    from ray import serve

    dam, work, port = tmp_path_factory.mktemp("review-dam"), tmp_path_factory.mktemp("review-work"), free_port()
    config = ServeConfig(model="tiny", device="cpu", dam=str(dam), profile="draft", workdir=work)
    url = run_server(config, port=port, api_tokens=TOKENS, blocking=False, log=lambda line: None)
    posted = requests.post(f"{url}/v1/renders", json=brief("gate", aspect_ratios=["16:9", "9:16"]),
                           headers={"Authorization": "Bearer tok-a-5151"}, timeout=30)
    assert posted.status_code == 202, posted.text
    ids = posted.json()["render_ids"]
    deadline = time.monotonic() + WAIT_S
    for render_id in ids:
        while requests.get(f"{url}/v1/renders/{render_id}", headers={"Authorization": "Bearer tok-a-5151"},
                           timeout=30).json()["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, f"{render_id} not done after {WAIT_S} s"
            time.sleep(0.5)
    yield {"url": url, "dam": dam, "ids": ids}
    serve.shutdown()


def wait_for(condition, what: str, timeout_s: float = 30):
    """``condition()`` once it is true; the page redraws its cards after each decision, so an element
    found just before a redraw is stale, and the condition is asked again."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def card(driver, render_id: str):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f"article[data-render-id='{render_id}']")
    return found[0] if found else None


def test_a_reviewer_approves_one_clip_and_rejects_another_in_chromium(browser, rendered, tmp_path):
    from selenium.webdriver.common.by import By

    url, first, second = rendered["url"], *rendered["ids"]
    browser.get(f"{url}/review")
    wait_for(lambda: "Sign in" in browser.find_element(By.ID, "message").text, "the sign-in prompt")
    browser.find_element(By.ID, "token").send_keys("tok-r-6262")
    browser.find_element(By.ID, "signin-button").click()
    wait_for(lambda: card(browser, first) and card(browser, second), "both clips")
    video = card(browser, first).find_element(By.TAG_NAME, "video")
    assert video.get_attribute("poster").startswith(f"{url}/v1/review/assets/")
    assert requests.get(video.get_attribute("src"), timeout=30).content[4:8] == b"ftyp"
    assert card(browser, first).find_element(By.TAG_NAME, "track").get_attribute("kind") == "captions"
    assert "loudness" in card(browser, first).text and "take 0" in card(browser, first).text

    card(browser, first).find_element(By.CSS_SELECTOR, "button.approve").click()
    wait_for(lambda: (c := card(browser, first)) is not None and "approved by rita" in c.text, "approval")
    card(browser, second).find_element(By.CSS_SELECTOR, "textarea.note").send_keys("voice is off-sync")
    card(browser, second).find_element(By.CSS_SELECTOR, "button.reject").click()
    wait_for(lambda: (c := card(browser, second)) is not None and "rejected by rita" in c.text, "rejection")
    assert "voice is off-sync" in card(browser, second).text
    # The browser itself loads each clip (H.264 + AAC) and its poster, as a reviewer's would.
    for render_id in (first, second):
        wait_for(lambda: browser.execute_script(
            "const v = arguments[0].querySelector('video'); return v.readyState >= 1 && v.duration > 1.5",
            card(browser, render_id)), f"the browser to load the clip of {render_id}")
    poster = card(browser, first).find_element(By.TAG_NAME, "video").get_attribute("poster")
    assert requests.get(poster, timeout=30).headers["content-type"] == "image/jpeg"
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(tmp_path / "review-desktop.png"))
    browser.set_window_size(390, 844)  # a phone
    wait_for(lambda: browser.execute_script("return document.documentElement.scrollWidth") <= 390, "no sideways scroll")
    browser.save_screenshot(str(tmp_path / "review-phone.png"))
    print(f"screenshots: {tmp_path}")
    assert (tmp_path / "review-desktop.png").stat().st_size > 10_000

    dam = open_dam(rendered["dam"])
    rows = read_dam_manifest(dam)
    for render_id, status, note in ((first, "approved", None), (second, "rejected", "voice is off-sync")):
        row = rows[render_id]
        assert (row.review_status, row.reviewed_by, row.review_note) == (status, "rita", note)
        for key in row.keys.values():
            assert dam.get_tags(key)["review_status"] == status and dam.get_tags(key)["reviewed_by"] == "rita"
        (entry,) = read_decisions(dam, row)
        assert (entry.decision, entry.reviewed_by, entry.note) == (status, "rita", note or "")


def test_paddock_review_serves_the_page_alone(rendered, tmp_path):
    port = free_port()
    env = {**os.environ, "PADDOCK_API_TOKEN": TOKENS, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "jobs.cli", "review", "--dam", str(rendered["dam"]),
                                "--port", str(port), "--workdir", str(tmp_path)], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def listening() -> bool:
            assert process.poll() is None, process.stdout.read()
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, "paddock review to listen", 60)
        base = f"http://127.0.0.1:{port}"
        page = requests.get(f"{base}/review", timeout=30)
        assert page.status_code == 200 and "paddock review" in page.text
        assert requests.get(f"{base}/v1/review/renders", timeout=30).status_code == 401
        render_only = requests.get(f"{base}/v1/review/renders", headers={"Authorization": "Bearer tok-a-5151"}, timeout=30)
        assert render_only.status_code == 403
        items = requests.get(f"{base}/v1/review/renders", headers={"Authorization": "Bearer tok-r-6262"}, timeout=30).json()
        by_id = {item["render_id"]: item for item in items}
        assert set(rendered["ids"]) <= set(by_id)
        first = by_id[rendered["ids"][0]]
        assert first["review_status"] == "approved" and first["reviewed_by"] == "rita"
        assert requests.get(base + first["assets"]["mp4"], timeout=30).content[4:8] == b"ftyp"
        forged = first["assets"]["mp4"].replace("sig=", "sig=0")
        assert requests.get(base + forged, timeout=30).status_code == 403
        # No renderer here: a retake leaves a queued job record for the next `paddock serve` on this DAM.
        retake = requests.post(f"{base}/v1/renders/{first['render_id']}/review", json={"decision": "retake"},
                               headers={"Authorization": "Bearer tok-r-6262"}, timeout=30)
        assert retake.status_code == 200, retake.text
        record = json.loads((rendered["dam"] / "jobs" / f"{retake.json()['retake_render_id']}.json").read_text())
        assert record["status"] == "queued" and record["request"]["take"] == 1
        assert record["request"]["brief_id"] == "gate" and "rita" in record["clients"]
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert Path(tmp_path).exists()
