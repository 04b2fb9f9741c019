"""The durable ad-hoc service on real Ray Serve over HTTP on loopback (tiny model, real ffmpeg,
a local-directory DAM): job records before the 202, a restart with renders queued, two ingress
replicas, signed webhooks to a loopback receiver, refused callback targets, per-client quotas,
the OpenAI-style /v1/videos flow, review roles and retakes."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from test_serve import brief, free_port

from jobs.serve_app import ServeConfig, run_server
from pipeline.dam import open_dam
from pipeline.reports import read_dam_manifest

TOKENS = {"alice": "tok-alice-91", "bob": "tok-bob-22", "rita": "tok-rita-37", "carol": "tok-carol-48"}
ROLES = {"rita": "review", "carol": "render+review"}
WAIT_S = 240


def auth(client: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[client]}"}


def start(dam, port, workdir, **settings) -> str:
    config = ServeConfig(model="tiny", device="cpu", dam=str(dam), profile="draft", callback_allow=("127.0.0.1",),
                         client_queue_limit=2, queue_limit=8, workdir=workdir, webhook_deadline_s=20, **settings)
    tokens = ",".join(f"{c}:{t}" + (f":{ROLES[c]}" if c in ROLES else "") for c, t in TOKENS.items())
    return run_server(config, port=port, api_tokens=tokens, blocking=False, log=lambda line: None)


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    from ray import serve

    dam, work, port = tmp_path_factory.mktemp("durable-dam"), tmp_path_factory.mktemp("durable-work"), free_port()
    url = start(dam, port, work)
    yield {"url": url, "dam": dam, "work": work, "port": port}
    serve.shutdown()


def wait_done(url: str, render_id: str, client: str = "alice", path: str = "/v1/renders") -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        response = requests.get(f"{url}{path}/{render_id}", headers=auth(client), timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in ("done", "failed", "completed"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"{render_id} not finished after {WAIT_S} s")


class Receiver:
    """A webhook receiver on loopback that checks each signature with the client's token."""

    def __init__(self, token: str):
        self.calls: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stamp = self.headers["X-Paddock-Timestamp"]
                expected = "sha256=" + hmac.new(token.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
                good = hmac.compare_digest(expected, self.headers["X-Paddock-Signature"])
                receiver.calls.append({"body": json.loads(body), "signature_ok": good, "timestamp": int(stamp)})
                # The first delivery fails: paddock must retry.
                self.send_response(200 if len(receiver.calls) > 1 else 503)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_render_with_a_signed_webhook_to_a_loopback_receiver(service):
    url, dam = service["url"], service["dam"]
    receiver = Receiver(TOKENS["alice"])
    try:
        posted = requests.post(f"{url}/v1/renders", json=brief("hooked", callback_url=receiver.url),
                               headers=auth("alice"), timeout=30)
        assert posted.status_code == 202, posted.text
        (render_id,) = posted.json()["render_ids"]
        # The job record is in the DAM before the 202 came back.
        record = json.loads((dam / "jobs" / f"{render_id}.json").read_text())
        assert record["clients"] == ["alice"] and record["callbacks"] == {"alice": receiver.url}
        assert wait_done(url, render_id)["status"] == "done"
        deadline = time.monotonic() + 30
        while len(receiver.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        receiver.close()
    assert [c["signature_ok"] for c in receiver.calls] == [True, True]
    assert receiver.calls[1]["body"]["render_id"] == render_id and receiver.calls[1]["body"]["status"] == "done"
    assert abs(receiver.calls[1]["timestamp"] - time.time()) < 120
    status = requests.get(f"{url}/v1/renders/{render_id}", headers=auth("alice"), timeout=30).json()
    assert [a["status_code"] for a in status["webhook_attempts"]] == [503, 200]
    # The ad-hoc render is a manifest row and a lineage run.
    row = read_dam_manifest(open_dam(dam))[render_id]
    assert (row.campaign_id, row.brief_id, row.status) == ("adhoc", "hooked", "done")
    events = [json.loads(line) for line in (service["work"] / "lineage.jsonl").read_text().splitlines()]
    adhoc = [e for e in events if e["job"]["name"] == "adhoc.adhoc.hooked"]
    assert [e["eventType"] for e in adhoc] == ["START", "COMPLETE"] and len({e["run"]["runId"] for e in adhoc}) == 1


@pytest.mark.parametrize("callback, words", [
    ("https://10.1.2.3/hook", "private"), ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[::1]/hook", "loopback"), ("https://localhost/hook", "local or metadata"),
    ("http://192.168.1.10/hook", "https"), ("https://metadata.google.internal/x", "metadata"),
    ("ftp://127.0.0.1/hook", "https")])
def test_callbacks_to_private_or_metadata_addresses_are_refused(service, callback, words):
    posted = requests.post(f"{service['url']}/v1/renders", json=brief("refused", callback_url=callback),
                           headers=auth("alice"), timeout=30)
    assert posted.status_code == 422, posted.text
    (detail,) = posted.json()["detail"]
    assert detail["loc"] == ["body", "callback_url"] and words in detail["msg"]
    assert not (service["dam"] / "jobs").exists() or not any(
        json.loads(p.read_text())["request"]["brief_id"] == "refused" for p in (service["dam"] / "jobs").glob("*.json"))


def test_a_client_over_its_quota_gets_429_and_others_still_get_in(service):
    url = service["url"]
    answers = [requests.post(f"{url}/v1/renders", json=brief(f"quota-{i}", seed=300 + i), headers=auth("bob"),
                             timeout=30) for i in range(5)]
    codes = [a.status_code for a in answers]
    assert 429 in codes and codes[:2] == [202, 202], codes
    refused = answers[codes.index(429)]
    assert 1 <= int(refused.headers["Retry-After"]) <= 600 and "bob" in refused.json()["detail"]
    other = requests.post(f"{url}/v1/renders", json=brief("quota-other", seed=399), headers=auth("carol"), timeout=30)
    assert other.status_code == 202, other.text
    for answer in [a for a in answers if a.status_code == 202]:
        assert wait_done(url, answer.json()["render_ids"][0], client="bob")["status"] == "done"
    assert wait_done(url, other.json()["render_ids"][0], client="carol")["status"] == "done"


def test_the_videos_api_to_the_mp4_bytes(service):
    url = service["url"]
    created = requests.post(f"{url}/v1/videos", json={"prompt": "A red kite over a beach.", "seconds": "2",
                                                      "size": "448x256", "seed": 5}, headers=auth("alice"), timeout=30)
    assert created.status_code == 200, created.text
    video = created.json()
    assert video["status"] == "queued" and video["object"] == "video" and video["size"] == "448x256"
    done = wait_done(url, video["id"], path="/v1/videos")
    assert done["status"] == "completed" and done["seconds"] == "2" and done["completed_at"] >= done["created_at"]
    content = requests.get(f"{url}/v1/videos/{video['id']}/content", headers=auth("alice"), timeout=30)
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    assert content.content[4:8] == b"ftyp" and len(content.content) > 1000
    listed = requests.get(f"{url}/v1/videos", headers=auth("alice"), timeout=30).json()
    assert listed["object"] == "list" and video["id"] in [v["id"] for v in listed["data"]]
    assert requests.get(f"{url}/v1/videos", headers=auth("bob"), timeout=30).json()["data"] == []
    assert requests.get(f"{url}/v1/videos/{video['id']}", headers=auth("bob"), timeout=30).status_code == 404
    bad = requests.post(f"{url}/v1/videos", json={"prompt": "x", "size": "1000x1000"}, headers=auth("alice"), timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "size"]


def test_decisions_need_the_review_role_and_a_retake_joins_the_group(service):
    url = service["url"]
    (render_id,) = requests.post(f"{url}/v1/renders", json=brief("to-review", seed=500), headers=auth("alice"),
                                 timeout=30).json()["render_ids"]
    assert wait_done(url, render_id)["status"] == "done"
    decision = {"decision": "approved", "note": ""}
    assert requests.post(f"{url}/v1/renders/{render_id}/review", json=decision, headers=auth("alice"),
                         timeout=30).status_code == 403
    assert requests.post(f"{url}/v1/renders", json=brief("nope"), headers=auth("rita"), timeout=30).status_code == 403
    approved = requests.post(f"{url}/v1/renders/{render_id}/review", json=decision, headers=auth("rita"), timeout=30)
    assert approved.status_code == 200, approved.text
    assert approved.json()["review_status"] == "approved" and approved.json()["entry"]["reviewed_by"] == "rita"
    retake = requests.post(f"{url}/v1/renders/{render_id}/review", json={"decision": "retake", "note": "again"},
                           headers=auth("carol"), timeout=30)
    assert retake.status_code == 200, retake.text
    new_id = retake.json()["retake_render_id"]
    assert new_id and new_id != render_id
    again = wait_done(url, new_id, client="carol")
    assert again["status"] == "done" and again["take"] == 1 and again["seed"] == 501
    rows = read_dam_manifest(open_dam(service["dam"]))
    group = {(r.brief_id, r.variant_id, r.locale, r.aspect_ratio) for r in (rows[render_id], rows[new_id])}
    assert len(group) == 1 and rows[render_id].review_status == "approved"
    log = requests.get(f"{url}/v1/renders/{render_id}/review", headers=auth("rita"), timeout=30).json()
    assert [e["decision"] for e in log] == ["approved", "retake"] and log[1]["retake_render_id"] == new_id


@pytest.mark.slow  # restarts Serve with two replicas
def test_a_restart_with_two_renders_queued_finishes_both_and_two_replicas_agree(service):
    url, dam = service["url"], service["dam"]
    ids = [requests.post(f"{url}/v1/renders", json=brief(f"restart-{i}", seed=700 + i), headers=auth("carol"),
                         timeout=30).json()["render_ids"][0] for i in range(2)]
    statuses = [json.loads((dam / "jobs" / f"{rid}.json").read_text())["status"] for rid in ids]
    assert "queued" in statuses, statuses  # one may have started; at least one is still waiting
    # A redeploy with other settings replaces the ingress: its queue in memory is gone.
    assert start(dam, service["port"], service["work"], ingress_replicas=2) == url
    answers = {rid: wait_done(url, rid, client="carol") for rid in ids}
    assert all(a["status"] == "done" for a in answers.values()), answers
    for rid in ids:
        seen = {json.dumps(requests.get(f"{url}/v1/renders/{rid}", headers=auth("carol"), timeout=30).json(),
                           sort_keys=True) for _ in range(8)}
        assert len({json.loads(s)["finished_at"] for s in seen}) == 1  # both replicas answer the same
