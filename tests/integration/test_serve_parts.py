"""Parts of the ad-hoc endpoint that need no running server: tokens, placement options,
brief planning, asset URLs and the settings that must stop the server before it starts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, unquote, urlparse

import boto3
import pytest
import requests
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from s3_server import start_s3_server

from jobs.args import ServeSetupError
from jobs.auth import (TOKEN_ENV, Authenticator, ClientToken, client_for_token, is_loopback, parse_api_tokens,
                       require_role)
from jobs.renderer import renderer_config
from jobs.serve_app import AdHocBrief, Renderer, ServeConfig, build_app, plan_renders, renderer_options, run_server
from pipeline.dam.local import LocalDAM
from pipeline.dam.s3 import S3DAM


def test_one_token_or_client_token_pairs():
    assert parse_api_tokens(" s3cret ") == {"default": ClientToken(token="s3cret", roles={"render"})}
    assert parse_api_tokens("alice:a-1, bob:b-2:review, carol:c-3:render+review") == {
        "alice": ClientToken(token="a-1", roles={"render"}), "bob": ClientToken(token="b-2", roles={"review"}),
        "carol": ClientToken(token="c-3", roles={"render", "review"})}
    for spec, words in [(None, TOKEN_ENV), ("  ", "--insecure-local"), ("alice:a-1,b-2", "client_id:token"),
                        ("alice:a-1,alice:a-2", "twice"), ("alice:same,bob:same", "own"), ("alice:", "client_id:token"),
                        ("alice:a-1:admin", "roles are render and review"), ("alice:a-1:", "client_id:token")]:
        with pytest.raises(ServeSetupError, match=words):
            parse_api_tokens(spec)


def test_token_lookup_is_exact():
    tokens = parse_api_tokens("alice:a-1,bob:b-2")
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


def test_insecure_local_checks_the_bind_address_and_refuses_proxies(tmp_path):
    with pytest.raises(ServeSetupError, match="host must be loopback"):
        build_app({"dam": str(tmp_path), "insecure_local": True, "host": "0.0.0.0"})
    auth = Authenticator({}, insecure_local=True, bind_host="127.0.0.1")
    local = auth.caller("127.0.0.1", {}, None)
    assert local.client_id == "local" and local.roles == {"render", "review"}
    for peer, headers in (("10.0.0.4", {}), ("127.0.0.1", {"x-forwarded-for": "203.0.113.9"}),
                          ("127.0.0.1", {"forwarded": "for=203.0.113.9"})):
        with pytest.raises(HTTPException) as refused:
            auth.caller(peer, headers, None)
        assert refused.value.status_code == 403
    with pytest.raises(ServeSetupError, match="loopback"):
        Authenticator({}, insecure_local=True, bind_host="0.0.0.0")


def test_roles_decide_what_a_token_may_do():
    auth = Authenticator(parse_api_tokens("alice:a-1,rita:r-2:review"), insecure_local=False, bind_host="0.0.0.0")
    alice, rita = auth.caller("10.0.0.4", {}, "a-1"), auth.caller("10.0.0.4", {}, "r-2")
    assert require_role(alice, "render") == alice and alice.token == "a-1"
    with pytest.raises(HTTPException) as forbidden:
        require_role(alice, "review")
    assert forbidden.value.status_code == 403 and "alice:<token>:render+review" in forbidden.value.detail
    assert require_role(rita, "review") == rita
    with pytest.raises(HTTPException) as unknown:
        auth.caller("10.0.0.4", {}, "r-3")
    assert unknown.value.status_code == 401


def test_presigned_urls_are_signed_for_the_buckets_region_and_end_with_the_credentials():
    from botocore.credentials import RefreshableCredentials

    with start_s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="far", CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
        dam = S3DAM("far", "adhoc", endpoint_url=endpoint)
        dam.put_bytes("campaign=c/r1.vtt", b"WEBVTT\n")
        url = dam.url("campaign=c/r1.vtt", 3600)
        assert "%2Fap-southeast-2%2Fs3%2Faws4_request" in url and "X-Amz-Expires=3600" in url
        assert requests.get(url, timeout=30).content == b"WEBVTT\n"
        # Temporary credentials that end in 20 minutes: the URL ends with them, not an hour later.
        frozen = dam._presigner()._request_signer._credentials.get_frozen_credentials()
        expiry = datetime.now(timezone.utc) + timedelta(minutes=20)
        dam._presigner()._request_signer._credentials = RefreshableCredentials(
            frozen.access_key, frozen.secret_key, "session-token", expiry, refresh_using=lambda: {}, method="sts")
        expires = int(parse_qs(urlparse(dam.url("campaign=c/r1.vtt", 3600)).query)["X-Amz-Expires"][0])
        assert 1150 <= expires <= 1200


def test_a_renderer_too_big_for_the_clusters_gpus_stops_the_server_at_startup(monkeypatch, tmp_path):
    import model.placement
    from model.memory import smallest_fitting_tp

    # The edge that cannot run here: the cluster's GPU nodes, read as 80 GiB cards.
    monkeypatch.setattr(model.placement, "cluster_gpu_bytes", lambda: 80 * 2**30)
    args = {"dam": str(tmp_path), "model": "magihuman-distill", "device": "cuda", "tp_size": 1, "insecure_local": True}
    with pytest.raises(ServeSetupError) as err:
        build_app(args)
    message = str(err.value)
    # Serve checks every resolution a brief may ask, at the longest duration (15 s).
    smallest = smallest_fitting_tp(renderer_config(ServeConfig(**{**args, "tp_size": 2})), 80 * 2**30,
                                   ["256p", "540p", "720p", "1080p"])
    assert smallest == 2
    assert "\n" not in message and message.startswith("serve: --tp 1: a magihuman-distill replica needs about")
    assert "at 1080p 15 s" in message and "use --tp 2, the smallest that fits" in message
    build_app({**args, "tp_size": 2})  # fits: the application is built


def test_a_renderer_call_past_its_timeout_fails_the_job_naming_the_timeout_and_healthz_reports_it(tmp_path):
    import asyncio
    import time

    from jobs.jobstore import JobRecord
    from jobs.serve_app import Api

    class HungCall:
        """A Renderer call that never finishes: it waits on an event only the test sets."""

        def __init__(self, release: asyncio.Event):
            self.release, self.cancelled = release, False

        def __await__(self):
            return self.release.wait().__await__()

        def cancel(self):
            self.cancelled = True

    class HungRenderer:  # the edge: the Renderer deployment's handle
        def __init__(self):
            self.release, self.calls = asyncio.Event(), []

        def remote(self, table):
            self.calls.append(HungCall(self.release))
            return self.calls[-1]

    api_class = next(c for c in Api.func_or_class.__mro__ if c.__dict__.get("_render"))  # the class Serve wraps

    async def scenario():
        renderer = HungRenderer()
        api = api_class.__new__(api_class)
        # With tokens (not insecure_local), the Api asks no Serve controller for its proxy's address.
        api_class.__init__(api, ServeConfig(dam=str(tmp_path / "dam"), workdir=tmp_path / "work",
                                            render_timeout_s=0.5, replicas=1), renderer, "alice:tok-alice-3f9a")
        try:
            assert await api.healthz() == {"status": "ok"}
            (request,) = plan_renders(brief(), "tiny")
            record = JobRecord(render_id=request.render_id, request=request, clients=["alice"])
            await asyncio.to_thread(api.jobs.put, record)
            started = time.monotonic()
            api._enqueue(record)
            stored = None
            while time.monotonic() - started < 30 and not (stored and stored.finished):
                await asyncio.sleep(0.05)  # the record in the DAM, as every ingress replica reads it
                stored = await asyncio.to_thread(api.jobs.get, record.render_id)
            assert stored is not None and stored.status == "failed", stored
            assert "render_timeout_s (0.5 s)" in stored.error and "cancelled" in stored.error
            assert 0.5 <= (stored.finished_at - stored.started_at).total_seconds() < 10
            assert len(renderer.calls) == 1 and renderer.calls[0].cancelled and not renderer.release.is_set()
            with pytest.raises(HTTPException) as err:
                await api.healthz()
            assert err.value.status_code == 503 and "Renderer replica is stuck" in err.value.detail
            assert "render_timeout_s (0.5 s)" in err.value.detail
        finally:
            renderer.release.set()
            for task in (*api.workers, api.resumed):
                task.cancel()

    asyncio.run(scenario())
