"""The ad-hoc endpoint on real Ray Serve, driven over HTTP on loopback: tiny model on the CPU,
real ffmpeg, a local-directory DAM."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import boto3
import pytest
import requests
from s3_server import start_s3_server

from jobs.args import ServeSetupError
from jobs.serve_app import MAX_BODY_BYTES, ServeConfig, run_server

TOKENS = {"alice": "tok-alice-3f9a", "bob": "tok-bob-77c1"}
RENDER_WAIT_S = 180
WORKDIR = {"path": Path("./work")}  # the module's server writes lineage.jsonl here (set by the fixture)


def brief(brief_id: str = "adhoc-talk", **overrides) -> dict:
    return {"brief_id": brief_id, "campaign_id": "adhoc", "prompt": "A man waves at the camera and speaks.",
            "source_locale": "en-US", "dialogue": [{"speaker": "Man", "line": "Hi there."}],
            "duration_s": 2, "resolution": "256p", "seed": 11, "variants": None, **overrides}


def auth(client: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[client]}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(dam: Path | str, port: int, **settings) -> str:
    """(Re)deploy the app; Serve replaces the deployments whose arguments changed."""
    # The fastest encode: what these tests check is the endpoint, not the x264 settings.
    config = ServeConfig(model="tiny", device="cpu", dam=str(dam), workdir=WORKDIR["path"],
                         **{"profile": "draft", **settings})
    tokens = ",".join(f"{client}:{token}" for client, token in TOKENS.items())
    return run_server(config, port=port, api_tokens=tokens, blocking=False, log=lambda line: None)


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    from ray import serve

    dam, port = tmp_path_factory.mktemp("serve-dam"), free_port()
    WORKDIR["path"] = tmp_path_factory.mktemp("serve-work")
    url = start(dam, port, queue_limit=1)
    yield {"url": url, "dam": dam, "port": port}
    serve.shutdown()


def wait_until_finished(url: str, render_id: str, client: str = "alice") -> dict:
    deadline = time.monotonic() + RENDER_WAIT_S
    while time.monotonic() < deadline:
        response = requests.get(f"{url}/v1/renders/{render_id}", headers=auth(client), timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] in ("queued", "running", "done", "failed")
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"render {render_id} not finished after {RENDER_WAIT_S} s")


def test_health_and_openapi(server):
    assert requests.get(f"{server['url']}/healthz", timeout=30).json() == {"status": "ok"}
    spec = requests.get(f"{server['url']}/openapi.json", timeout=30).json()
    assert {"/v1/renders", "/v1/renders/{render_id}", "/healthz"} <= set(spec["paths"])
    post = spec["paths"]["/v1/renders"]["post"]
    assert {"202", "401", "413", "422", "503"} <= set(post["responses"])
    body_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    brief_schema = spec["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]
    assert {"brief_id", "campaign_id", "prompt", "source_locale", "duration_s"} <= set(brief_schema["properties"])
    assert any(scheme["type"] == "http" and scheme["scheme"] == "bearer"
               for scheme in spec["components"]["securitySchemes"].values())


def test_a_render_goes_through_to_the_dam(server):
    url, dam = server["url"], server["dam"]
    response = requests.post(f"{url}/v1/renders", json=brief(), headers=auth("alice"), timeout=30)
    assert response.status_code == 202, response.text
    (render_id,) = response.json()["render_ids"]

    done = wait_until_finished(url, render_id)
    assert done["status"] == "done", done["error"]
    assert done["render_id"] == render_id and done["brief_id"] == "adhoc-talk" and done["locale"] == "en-US"
    assert done["review_status"] in ("auto_approved", "needs_review", "rejected")
    assert done["review"]["review_status"] == done["review_status"]
    assert done["review"]["duration_s"] == pytest.approx(2.0, abs=0.1)
    assert done["review"]["width"] > 0 and done["review_reasons"] == done["review"]["review_reasons"]
    assert set(done["assets"]) == {"mp4", "wav", "jpg", "vtt"}

    folder = dam / "campaign=adhoc" / "brief=adhoc-talk" / "variant=main" / "locale=en-US" / "16x9"
    record = json.loads((folder / f"{render_id}.done.json").read_text())
    assert record["review"]["review_status"] == done["review_status"]
    for ext, uri in done["assets"].items():
        assert urlparse(uri).scheme == "file"
        path = Path(unquote(urlparse(uri).path))
        assert path == folder / f"{render_id}.{ext}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["objects"][ext]["sha256"]
    assert (folder / f"{render_id}.mp4").read_bytes()[4:8] == b"ftyp"

    # Posting the same brief again gives the same id and renders nothing new.
    again = requests.post(f"{url}/v1/renders", json=brief(), headers=auth("alice"), timeout=30)
    assert again.status_code == 202 and again.json()["render_ids"] == [render_id]
    status = requests.get(f"{url}/v1/renders/{render_id}", headers=auth("alice"), timeout=30).json()
    assert status["status"] == "done"
    assert json.loads((folder / f"{render_id}.done.json").read_text())["archived_at"] == record["archived_at"]
    server["render_id"] = render_id


def test_auth_is_required_and_clients_see_only_their_renders(server):
    url = server["url"]
    missing = requests.post(f"{url}/v1/renders", json=brief("no-token"), timeout=30)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = requests.post(f"{url}/v1/renders", json=brief("wrong-token"),
                          headers={"Authorization": "Bearer tok-alice-3f9b"}, timeout=30)
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    # Auth comes before validation: an anonymous caller learns nothing about the body.
    bad_and_anonymous = requests.post(f"{url}/v1/renders", json=brief(duration_s=99), timeout=30)
    assert bad_and_anonymous.status_code == 401
    basic = requests.get(f"{url}/v1/renders/r0", headers={"Authorization": "Basic YWxpY2U6eA=="}, timeout=30)
    assert basic.status_code == 401

    # Alice's render (done already when the module runs in order, so nothing is queued).
    mine = requests.post(f"{url}/v1/renders", json=brief(), headers=auth("alice"), timeout=30)
    assert mine.status_code == 202, mine.text
    (render_id,) = mine.json()["render_ids"]
    assert requests.get(f"{url}/v1/renders/{render_id}", headers=auth("alice"), timeout=30).status_code == 200
    assert requests.get(f"{url}/v1/renders/{render_id}", timeout=30).status_code == 401
    other = requests.get(f"{url}/v1/renders/{render_id}", headers=auth("bob"), timeout=30)
    unknown = requests.get(f"{url}/v1/renders/r{'f' * 23}", headers=auth("bob"), timeout=30)
    assert other.status_code == unknown.status_code == 404
    assert render_id not in json.dumps(unknown.json())


def test_bad_bodies_answer_422_naming_the_field(server):
    url, headers = server["url"], auth("alice")

    def detail(body=None, *, raw: bytes | None = None) -> list[dict]:
        sent = {"json": body} if raw is None else {"data": raw}
        response = requests.post(f"{url}/v1/renders", timeout=30, **sent,
                                 headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        return response.json()["detail"]

    (duration,) = detail(brief(duration_s=99))
    assert duration["loc"] == ["body", "duration_s"] and "15" in duration["msg"]
    assert detail({k: v for k, v in brief().items() if k != "prompt"})[0]["loc"] == ["body", "prompt"]
    assert detail(brief(aspect_ratios=["7:3"]))[0]["loc"][:2] == ["body", "aspect_ratios"]
    assert detail(brief(brief_id="../etc"))[0]["loc"] == ["body", "brief_id"]
    assert detail(brief(reference_image_uri="/etc/hostname"))[0]["loc"] == ["body", "reference_image_uri"]
    # Per-locale faults name the locale: a language the model does not speak, a missing translation.
    (unsupported,) = detail(brief(locales=["en-US", "sv-SE"]))
    assert unsupported["loc"] == ["body", "locales", 1] and "sv-SE" in unsupported["msg"]
    (untranslated,) = detail(brief(locales=["de-DE"]))
    assert untranslated["loc"] == ["body", "locales", 0] and "localized_dialogue" in untranslated["msg"]
    assert detail(raw=b'{"brief_id": "x",')[0]["type"] == "json_invalid"
    assert detail([brief()])[0]["loc"] == ["body"]


def test_oversize_bodies_answer_413(server):
    url, headers = server["url"], auth("alice")
    big = brief(prompt="x" * (MAX_BODY_BYTES + 1))
    assert requests.post(f"{url}/v1/renders", json=big, headers=headers, timeout=30).status_code == 413
    # Streamed (chunked, no Content-Length): cut off as it arrives.
    payload = json.dumps(big).encode()
    chunks = (payload[i:i + 8192] for i in range(0, len(payload), 8192))
    streamed = requests.post(f"{url}/v1/renders", data=chunks, timeout=30,
                             headers={**headers, "Content-Type": "application/json"})
    assert streamed.status_code == 413
    # A small streamed body still gets through to validation.
    small = requests.post(f"{url}/v1/renders", data=iter([json.dumps(brief(duration_s=99)).encode()]), timeout=30,
                          headers={**headers, "Content-Type": "application/json"})
    assert small.status_code == 422
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200


def test_a_flood_past_the_queue_limit_gets_503_and_the_accepted_renders_finish(server):
    url, headers = server["url"], auth("bob")
    answers = [requests.post(f"{url}/v1/renders", json=brief(f"flood-{i}", seed=100 + i), headers=headers, timeout=30)
               for i in range(5)]
    codes = [a.status_code for a in answers]
    assert codes[0] == 202 and set(codes) == {202, 503}, codes
    # queue_limit 1: at most one waiting and one rendering before a render can finish.
    assert codes.count(202) <= 3, codes
    for answer in answers:
        if answer.status_code == 503:
            assert 1 <= int(answer.headers["Retry-After"]) <= 600
    accepted = [a.json()["render_ids"][0] for a in answers if a.status_code == 202]
    for render_id in accepted:
        assert wait_until_finished(url, render_id, client="bob")["status"] == "done"
    retried = requests.post(f"{url}/v1/renders", json=brief("flood-4", seed=104), headers=headers, timeout=30)
    assert retried.status_code == 202
    assert wait_until_finished(url, retried.json()["render_ids"][0], client="bob")["status"] == "done"
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200


def test_a_render_that_cannot_be_archived_fails_and_a_repost_retries_it(server):
    url, dam = server["url"], server["dam"]
    blocker = dam / "campaign=blocked"
    blocker.write_text("a file where the campaign folder should be")
    body = brief("blocked-talk", campaign_id="blocked")
    (render_id,) = requests.post(f"{url}/v1/renders", json=body, headers=auth("alice"), timeout=30).json()["render_ids"]
    failed = wait_until_finished(url, render_id)
    assert failed["status"] == "failed" and failed["error"].startswith("archive: ")
    assert failed["assets"] == {} and failed["review_status"] is not None  # reviewed, then not archived
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200

    blocker.unlink()
    again = requests.post(f"{url}/v1/renders", json=body, headers=auth("alice"), timeout=30)
    assert again.status_code == 202 and again.json()["render_ids"] == [render_id]
    done = wait_until_finished(url, render_id)
    assert done["status"] == "done" and done["error"] is None and set(done["assets"]) == {"mp4", "wav", "jpg", "vtt"}


@pytest.mark.slow  # stops and starts the Serve application
def test_a_restarted_server_answers_a_new_client_from_the_dam(server):
    """Restarted as --insecure-local: no token needed, loopback only; the anonymous client did not ask for
    the render, so it is not among its renders until it posts the brief."""
    url = server["url"]
    render_id = server.get("render_id")
    if render_id is None:  # run in the slow tier, without the everyday tests: make the render it restarts over
        response = requests.post(f"{url}/v1/renders", json=brief(), headers=auth("alice"), timeout=30)
        (render_id,) = response.json()["render_ids"]
        assert wait_until_finished(url, render_id)["status"] == "done"
    folder = server["dam"] / "campaign=adhoc" / "brief=adhoc-talk" / "variant=main" / "locale=en-US" / "16x9"
    archived_at = json.loads((folder / f"{render_id}.done.json").read_text())["archived_at"]
    with pytest.raises(ServeSetupError, match="loopback"):
        run_server(ServeConfig(dam=str(server["dam"]), insecure_local=True), host="0.0.0.0", port=server["port"],
                   blocking=False, log=lambda line: None)
    # New settings make Serve replace the deployments: a fresh Api with an empty status table.
    assert start(server["dam"], server["port"], insecure_local=True) == url
    assert requests.get(f"{url}/v1/renders/{render_id}", timeout=30).status_code == 404
    response = requests.post(f"{url}/v1/renders", json=brief(), timeout=30)
    assert response.status_code == 202 and response.json()["render_ids"] == [render_id]
    status = requests.get(f"{url}/v1/renders/{render_id}", timeout=30).json()
    assert status["status"] == "done" and set(status["assets"]) == {"mp4", "wav", "jpg", "vtt"}
    assert status["review_status"] in ("auto_approved", "needs_review", "rejected")
    assert json.loads((folder / f"{render_id}.done.json").read_text())["archived_at"] == archived_at
    # Any bearer token is ignored: there is one anonymous client.
    assert requests.get(f"{url}/v1/renders/{render_id}", headers=auth("bob"), timeout=30).status_code == 200


def test_renders_land_in_s3_and_come_back_as_presigned_urls(server):
    url = server["url"]
    with start_s3_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="dam")
        start("s3://dam/adhoc", server["port"], s3_endpoint=endpoint)
        response = requests.post(f"{url}/v1/renders", json=brief("s3-talk"), headers=auth("alice"), timeout=30)
        assert response.status_code == 202, response.text
        (render_id,) = response.json()["render_ids"]
        done = wait_until_finished(url, render_id)
        assert done["status"] == "done", done["error"]
        prefix = f"adhoc/campaign=adhoc/brief=s3-talk/variant=main/locale=en-US/16x9/{render_id}"
        for ext, asset in done["assets"].items():
            assert asset.startswith(f"{endpoint}/dam/{quote(prefix)}.{ext}?") and "X-Amz-Signature=" in asset
            fetched = requests.get(asset, timeout=30)
            assert fetched.status_code == 200
            head = s3.head_object(Bucket="dam", Key=f"{prefix}.{ext}")
            assert hashlib.sha256(fetched.content).hexdigest() == head["Metadata"]["sha256"]
            tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket="dam", Key=f"{prefix}.{ext}")["TagSet"]}
            assert tags["review_status"] == done["review_status"]
