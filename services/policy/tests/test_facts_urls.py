"""URLs in arguments: every spelling of an address is classified as what it reaches."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from caduceus_policy.facts import request_facts
from caduceus_policy.facts.urls import classify_host, parse_ipv4, url_targets

ROOT = PurePosixPath("/srv/caduceus/workspaces/acme/default")


@pytest.mark.parametrize(
    ("url", "host", "classes"),
    [
        ("http://127.0.0.1/", "127.0.0.1", {"loopback"}),
        ("http://2130706433/", "127.0.0.1", {"loopback"}),
        ("http://0x7f000001/", "127.0.0.1", {"loopback"}),
        ("http://0x7f.1/", "127.0.0.1", {"loopback"}),
        ("http://017700000001/", "127.0.0.1", {"loopback"}),
        ("http://0177.0.0.01/", "127.0.0.1", {"loopback"}),
        ("http://127.1/", "127.0.0.1", {"loopback"}),
        ("http://localhost./", "localhost", {"loopback"}),
        ("http://LOCALHOST:8080/", "localhost", {"loopback"}),
        ("http://app.localhost/", "app.localhost", {"loopback"}),
        ("http://[::1]/", "::1", {"loopback"}),
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", {"loopback"}),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", {"metadata", "link_local"}),
        ("http://2852039166/", "169.254.169.254", {"metadata", "link_local"}),
        ("http://0xa9fea9fe/", "169.254.169.254", {"metadata", "link_local"}),
        ("http://0251.0376.0251.0376/", "169.254.169.254", {"metadata", "link_local"}),
        ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe", {"metadata", "link_local"}),
        ("http://[::ffff:a9fe:a9fe]/", "::ffff:a9fe:a9fe", {"metadata", "link_local"}),
        ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe", {"metadata", "link_local"}),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254", {"metadata", "private"}),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal", {"metadata", "private"}),
        ("http://169.254.169.254.nip.io/", "169.254.169.254.nip.io", {"metadata", "link_local", "name"}),
        ("http://10-0-0-1.sslip.io/", "10-0-0-1.sslip.io", {"private", "name"}),
        ("http://%31%32%37.0.0.1/", "127.0.0.1", {"loopback"}),
        ("http://evil.example@169.254.169.254/", "169.254.169.254", {"metadata", "link_local"}),
        ("http://10.1.2.3/", "10.1.2.3", {"private"}),
        ("http://192.168.0.1/", "192.168.0.1", {"private"}),
        ("http://100.64.0.1/", "100.64.0.1", {"private"}),
        ("http://[fe80::1%25eth0]/", "fe80::1", {"link_local"}),
        ("http://0.0.0.0:8000/", "0.0.0.0", {"unspecified"}),
        ("https://pypi.org/simple/", "pypi.org", {"name"}),
        ("https://93.184.216.34/", "93.184.216.34", {"public"}),
    ],
)
def test_every_spelling_of_an_address_is_classified(url: str, host: str, classes: set[str]) -> None:
    targets = url_targets(url)
    assert targets[0].host == host
    assert set(targets[0].classes) == classes


def test_a_backslash_reading_is_checked_too() -> None:
    # WHATWG parsers read `\` as `/`: the host is then 169.254.169.254, whatever RFC 3986 says.
    hosts = {t.host for t in url_targets("http://169.254.169.254\\@example.com/")}
    assert "169.254.169.254" in hosts


@pytest.mark.parametrize("text", ["1.2.3.4.5", "256.1.1.1", "0x1g", "1..2", "", "08.0.0.1"])
def test_what_is_not_an_address_is_not_parsed_as_one(text: str) -> None:
    assert parse_ipv4(text) is None


def test_names_are_not_resolved_but_kept() -> None:
    assert classify_host("Example.COM.") == ("example.com", frozenset({"name"}))


@pytest.mark.parametrize(
    ("tool", "args"),
    [("browser_navigate", {"url": "http://2852039166/"}),
     ("web_extract", {"urls": ["https://docs.python.org", "http://[::ffff:169.254.169.254]/"]}),
     ("execute_code", {"code": "import urllib.request\nurllib.request.urlopen('http://0xa9fea9fe/')"}),
     ("terminal", {"command": "wget -qO- 0251.0376.0251.0376"}),
     ("mcp__fetch__fetch", {"url": "http://metadata.google.internal/"})],
)
def test_metadata_urls_are_found_in_any_tool(tool: str, args: dict) -> None:
    facts = request_facts("acme", ("member",), tool, args, ROOT).facts
    assert facts["url_cloud_metadata"] is True and facts["url_private_network"] is True


def test_public_urls_raise_nothing() -> None:
    facts = request_facts("acme", ("member",), "web_extract", {"urls": ["https://docs.python.org/3/"]}, ROOT).facts
    assert (facts["url_private_network"], facts["url_hosts"], facts["url_schemes"]) == (
        False, {"docs.python.org"}, {"https"})
