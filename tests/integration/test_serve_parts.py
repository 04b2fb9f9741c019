"""Parts of the ad-hoc endpoint that need no running server: tokens, placement options,
brief planning, asset URLs and the settings that must stop the server before it starts."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

import boto3
import pytest
import requests
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from s3_server import start_s3_server

from jobs.args import ServeSetupError
from jobs.auth import TOKEN_ENV, client_for_token, is_loopback, parse_api_tokens
from jobs.serve_app import AdHocBrief, Renderer, ServeConfig, build_app, plan_renders, renderer_options, run_server
from pipeline.dam.local import LocalDAM
from pipeline.dam.s3 import S3DAM


def test_one_token_or_client_token_pairs():
    assert parse_api_tokens(" s3cret ") == {"default": "s3cret"}
    assert parse_api_tokens("alice:a-1, bob:b-2") == {"alice": "a-1", "bob": "b-2"}
    for spec, words in [(None, TOKEN_ENV), ("  ", "--insecure-local"), ("alice:a-1,b-2", "client_id:token"),
                        ("alice:a-1,alice:a-2", "twice"), ("alice:same,bob:same", "own"), ("alice:", "client_id:token")]:
        with pytest.raises(ServeSetupError, match=words):
            parse_api_tokens(spec)


def test_token_lookup_is_exact():
    tokens = {"alice": "a-1", "bob": "b-2"}
    assert client_for_token(tokens, "b-2") == "bob"
    for wrong in ("a-", "a-12", "A-1", "", "alice"):
        assert client_for_token(tokens, wrong) is None


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.7", "::", "example.com", None))


def test_renderer_placement_per_tp_size():
    assert renderer_options(1, 3, "cpu") == {"num_replicas": 3, "max_ongoing_requests": 1,
                                             "ray_actor_options": {"num_cpus": 1}}
    assert renderer_options(1, 1, "cuda")["ray_actor_options"] == {"num_gpus": 1, "num_cpus": 1}
    tp4 = renderer_options(4, 2, "cuda")
    assert tp4["placement_group_strategy"] == "STRICT_PACK" and tp4["num_replicas"] == 2
    assert tp4["placement_group_bundles"] == [{"CPU": 1}] + [{"CPU": 1, "GPU": 1}] * 4
    # The replica actor itself takes no GPU and fits bundle 0; the ranks take the rest.
    assert tp4["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}
    cpu_tp2 = renderer_options(2, 1, "cpu")  # gloo ranks share the cores: half a core each
    assert cpu_tp2["placement_group_bundles"] == [{"CPU": 0.5}] * 3
    assert cpu_tp2["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0}
    for options in (tp4, renderer_options(1, 1, "cpu")):
        Renderer.options(**options)  # Serve accepts them (it checks the actor against bundle 0)


def brief(**overrides) -> AdHocBrief:
    return AdHocBrief.model_validate({
        "brief_id": "b1", "campaign_id": "c1", "prompt": "A chef tastes the soup.", "source_locale": "en-US",
        "dialogue": [{"speaker": "Chef", "line": "Perfect."}], "duration_s": 2, "resolution": "256p", **overrides})


def test_plan_renders_checks_locales_like_ingest():
    requests_ = plan_renders(brief(locales=["en-us", "EN-US"], aspect_ratios=["16:9", "9:16"], variants=2), "tiny")
    assert {(r.locale, r.aspect_ratio, r.take) for r in requests_} == {
        ("en-US", a, v) for a in ("16:9", "9:16") for v in (0, 1)}
    assert len({r.render_id for r in requests_}) == 4
    with pytest.raises(RequestValidationError) as unsupported:
        plan_renders(brief(locales=["en-US", "pt-BR"]), "tiny")
    (error,) = unsupported.value.errors()
    assert error["loc"] == ("body", "locales", 1) and "pt-BR" in error["msg"]
    with pytest.raises(RequestValidationError) as malformed:
        plan_renders(brief(locales=["english"]), "tiny")
    assert malformed.value.errors()[0]["loc"] == ("body", "locales", 0)
    with pytest.raises(RequestValidationError) as source:
        plan_renders(brief(source_locale="sv-SE", dialogue=None), "tiny")
    assert source.value.errors()[0]["loc"] == ("body", "source_locale")


def test_null_means_not_given_and_no_reference_images():
    assert brief(duration_s=None, takes=None).takes == 1
    assert brief(duration_s=None).duration_s == 5
    with pytest.raises(ValidationError, match="reference_image_uri"):
        brief(reference_image_uri="file:///etc/hostname")


def test_local_assets_are_file_uris(tmp_path):
    dam = LocalDAM(tmp_path / "dam")
    dam.put_bytes("campaign=c/brief=b/locale=en-US/16x9/r1.vtt", b"WEBVTT\n")
    uri = dam.url("campaign=c/brief=b/locale=en-US/16x9/r1.vtt", 3600)
    assert urlparse(uri).scheme == "file"
    with open(unquote(urlparse(uri).path), "rb") as handle:
        assert handle.read() == b"WEBVTT\n"


def test_s3_assets_are_presigned_urls_that_expire():
    with start_s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="dam")
        dam = S3DAM("dam", "adhoc", endpoint_url=endpoint)
        dam.put_bytes("campaign=c/r1.vtt", b"WEBVTT\n")
        url = dam.url("campaign=c/r1.vtt", 900)
        assert url.startswith(f"{endpoint}/dam/adhoc/campaign%3Dc/r1.vtt?")
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=900" in url
        assert requests.get(url, timeout=30).content == b"WEBVTT\n"


def test_settings_that_stop_the_server_before_it_starts(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ServeSetupError, match=TOKEN_ENV):
        run_server(ServeConfig(dam=str(tmp_path)), blocking=False, log=print)
    with pytest.raises(ServeSetupError, match="loopback"):
        run_server(ServeConfig(dam=str(tmp_path), insecure_local=True), host="0.0.0.0", blocking=False, log=print)
    with pytest.raises(ServeSetupError, match="queue_limit"):
        build_app({"dam": str(tmp_path), "queue_limit": 0})
    with pytest.raises(ServeSetupError, match="port"):
        build_app({"dam": str(tmp_path), "port": 8000})
    with pytest.raises(ValidationError, match="profile"):
        ServeConfig(profile="cinema")


def test_a_renderer_call_past_its_timeout_fails_the_render_and_healthz_reports_the_stuck_replica(tmp_path):
    import asyncio

    from fastapi import HTTPException

    from jobs.serve_app import Api, RenderEntry, ServeConfig, plan_renders

    class HungCall:
        cancelled = False

        def __await__(self):
            return asyncio.sleep(3600).__await__()

        def cancel(self):
            HungCall.cancelled = True

    class HungRenderer:
        def remote(self, table):
            return HungCall()

    api_class = next(c for c in Api.func_or_class.__mro__ if c.__dict__.get("_render"))

    async def scenario():
        api = api_class.__new__(api_class)
        api_class.__init__(api, ServeConfig(dam=str(tmp_path / "dam"), insecure_local=True, render_timeout_s=0.2,
                                            replicas=1), HungRenderer())
        assert await api.healthz() == {"status": "ok"}
        (request,) = plan_renders(brief(), "tiny")
        entry = RenderEntry(request, {"anonymous"})
        api.queue.put_nowait(entry)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if entry.status == "failed":
                break
        assert entry.status == "failed" and "render_timeout_s (0.2 s)" in entry.error and HungCall.cancelled
        try:
            await api.healthz()
        except HTTPException as exc:
            assert exc.status_code == 503 and "Renderer replica is stuck" in exc.detail
        else:
            raise AssertionError("healthz said ok with a stuck renderer")
        for worker in api.workers:
            worker.cancel()

    asyncio.run(scenario())
