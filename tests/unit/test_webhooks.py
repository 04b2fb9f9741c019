"""Webhook targets and signatures (jobs/webhooks.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from jobs.webhooks import CallbackRefused, check_callback_url, sign


def resolving_to(*addresses: str):
    return lambda host: list(addresses)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_keyed_by_the_token():
    body = b'{"render_id":"r1","status":"done"}'
    expected = hmac.new(b"tok-1", b"1767225600." + body, hashlib.sha256).hexdigest()
    assert sign(body, "tok-1", 1767225600) == f"sha256={expected}"
    assert sign(body, "tok-2", 1767225600) != sign(body, "tok-1", 1767225600)
    assert sign(body, "tok-1", 1767225601) != sign(body, "tok-1", 1767225600)


def test_public_https_targets_pass():
    url = "https://hooks.example.com/paddock?x=1"
    assert check_callback_url(url, (), resolve=resolving_to("93.184.216.34", "2606:2800:220:1::1")) == url


@pytest.mark.parametrize("url, addresses, words", [
    ("https://hooks.example.com/x", ("10.0.0.8",), "private"),
    ("https://hooks.example.com/x", ("93.184.216.34", "192.168.0.3"), "private"),  # any address counts
    ("https://hooks.example.com/x", ("169.254.169.254",), "link-local"),
    ("https://hooks.example.com/x", ("::ffff:127.0.0.1",), "loopback"),
    ("https://hooks.example.com/x", ("100.64.0.1",), "not globally routable"),
    ("https://hooks.example.com/x", ("fd00:ec2::254",), "private"),
    ("https://127.0.0.1/x", ("127.0.0.1",), "loopback"),
    ("http://hooks.example.com/x", ("93.184.216.34",), "https"),
    ("https://user:pw@hooks.example.com/x", ("93.184.216.34",), "credentials"),
    ("https://metadata.google.internal/x", ("93.184.216.34",), "metadata"),
    ("https:///x", (), "https"),
])
def test_local_private_and_metadata_targets_are_refused(url, addresses, words):
    with pytest.raises(CallbackRefused, match=words) as refused:
        check_callback_url(url, (), resolve=resolving_to(*addresses))
    assert "callback_url" in str(refused.value)


def test_allowed_hosts_may_be_local_and_plain_http():
    assert check_callback_url("http://127.0.0.1:9000/hook", ("127.0.0.1",), resolve=resolving_to("127.0.0.1"))
    assert check_callback_url("https://Receiver.internal/hook", ("receiver.internal",), resolve=resolving_to("10.0.0.2"))
    with pytest.raises(CallbackRefused, match="https"):
        check_callback_url("ftp://127.0.0.1/hook", ("127.0.0.1",))


def test_a_name_that_does_not_resolve_is_refused():
    def fail(host):
        raise OSError("Name or service not known")

    with pytest.raises(CallbackRefused, match="does not resolve"):
        check_callback_url("https://nowhere.invalid/x", (), resolve=fail)
