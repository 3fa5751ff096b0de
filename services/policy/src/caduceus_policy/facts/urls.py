"""URLs in tool arguments: scheme, host and port, with the host classified in every spelling it can take.

An IPv4 address can be written as one decimal number (2130706433), in hex (0x7f000001),
in octal (017700000001), in short forms (127.1, 0x7f.1) or inside IPv6 (::ffff:169.254.169.254);
resolvers and HTTP clients accept all of them, so all of them are parsed the way
`inet_aton` does before the address is classified. Hosts are read as browsers and curl read
them (WHATWG): Unicode dots (full-width, ideographic, circled digits with a dot) are dots after
NFKC, `http:/x`, `http:\\x` and `http:x` name host x. Names that are loopback or metadata by
definition, and names that embed an address (169.254.169.254.nip.io), are classified by what
they say; a `NameResolver` (DNS on the host where the service runs) adds what a name resolves to.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import re
import socket
import threading
import time
import unicodedata
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

# Any scheme://... run inside free text (commands, code, JSON strings), and the special schemes browsers and curl
# accept with one slash, a backslash or none (`http:/127.0.0.1/`).
URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,15}://[^\s'\"<>`|;,)}]+"
                         r"|(?<![\w+.-])(?i:https?|wss?|ftp):(?:[/\\]|\\\\)[^\s'\"<>`|;,)}]+")
SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})
# Dots that IDNA (UTS #46) maps to `.`, besides what NFKC already maps (full-width ．, circled ⒈ is `1.`).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": ".", "\u2024": ".", "\ufe52": "."})


class NameResolver(Protocol):
    """The addresses a host name resolves to (empty when unknown)."""

    def addresses(self, name: str) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class NoLookups:
    """No I/O: names are classified by what they say (audit replay, tests, hosts without DNS)."""

    def addresses(self, name: str) -> tuple[str, ...]:
        return ()


class DnsLookups:
    """Resolves names with the host's resolver, each answer kept for `ttl_s`. A lookup slower than `timeout_s`
    counts as no answer for this decision (decisions run on the event loop: they must not wait on DNS), and its
    answer is kept when it arrives, for the next call that names the host; the sandbox's egress rules apply
    whatever a name resolves to."""

    def __init__(self, timeout_s: float = 0.1, ttl_s: float = 60.0, max_names: int = 4096) -> None:
        self.timeout_s, self.ttl_s, self.max_names = timeout_s, ttl_s, max_names
        self._answers: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._pending: dict[str, concurrent.futures.Future[tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="policy-dns")

    def addresses(self, name: str) -> tuple[str, ...]:
        with self._lock:
            cached = self._answers.get(name)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            future = self._pending.get(name)
            if future is None:
                future = self._pending[name] = self._pool.submit(self._lookup, name)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            return ()

    def _lookup(self, name: str) -> tuple[str, ...]:
        try:
            answer = tuple(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(name, None)))
        except (OSError, UnicodeError):
            answer = ()
        with self._lock:
            if len(self._answers) >= self.max_names:
                self._answers.clear()
            self._answers[name] = (time.monotonic() + self.ttl_s, answer)
            self._pending.pop(name, None)
        return answer


NO_LOOKUPS = NoLookups()

METADATA_V4 = frozenset({"169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192"})
METADATA_V6 = frozenset({ipaddress.IPv6Address("fd00:ec2::254")})
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                            "instance-data.ec2.internal", "metadata.azure.internal"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# Wildcard DNS services answer with the address written in the name.
_EMBEDDED_V4 = re.compile(r"(?:^|[.-])((?:\d{1,3}[.-]){3}\d{1,3})(?:[.-]|$)")

HostClass = str  # "loopback" | "private" | "link_local" | "metadata" | "unspecified" | "reserved" | "public" | "name"


@dataclass(frozen=True)
class UrlTarget:
    """Where one URL points: scheme, host as written and normalized, port, and the host's classes."""

    scheme: str
    host: str
    port: int | None
    classes: frozenset[HostClass]


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any spelling `inet_aton` accepts (1-4 parts, each decimal, 0x-hex or 0-octal)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or any(part == "" for part in parts):
        return None
    numbers: list[int] = []
    for part in parts:
        try:
            if part.lower().startswith("0x"):
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part, 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            return None
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (4 - len(leading)):
        return None
    value = 0
    for n in leading:
        value = value * 256 + n
    value = value * 256 ** (4 - len(leading)) + last
    return ipaddress.IPv4Address(value)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries: mapped, compatible, NAT64 or 6to4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    packed = int(address)
    if packed >> 32 == 0 and packed > 1:  # ::a.b.c.d (deprecated IPv4-compatible)
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if address in ipaddress.IPv6Network("64:ff9b::/96") or address in ipaddress.IPv6Network("64:ff9b:1::/48"):
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return None


def classify_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> frozenset[HostClass]:
    if isinstance(address, ipaddress.IPv6Address):
        if address in METADATA_V6:
            return frozenset({"metadata", "private"})
        embedded = _embedded_v4(address)
        if embedded is not None:
            return classify_ip(embedded)
    if isinstance(address, ipaddress.IPv4Address) and str(address) in METADATA_V4:
        return frozenset({"metadata", "link_local" if address.is_link_local else "private"})
    if address.is_unspecified:
        return frozenset({"unspecified"})  # 0.0.0.0 and :: reach this host
    if address.is_loopback:
        return frozenset({"loopback"})
    if address.is_link_local:
        return frozenset({"link_local"})
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.IPv4Network("100.64.0.0/10"):
        return frozenset({"private"})  # carrier-grade NAT: not public, and some clouds put metadata there
    if address.is_private:
        return frozenset({"private"})
    if address.is_multicast or address.is_reserved or not address.is_global:
        return frozenset({"reserved"})
    return frozenset({"public"})


def normalize_host(host: str) -> str:
    """Lowercase, percent-decoded, NFKC with every IDNA dot a `.`, without brackets, zone id or trailing dot."""
    text = unicodedata.normalize("NFKC", unquote(host)).translate(_DOTS).strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return text.split("%", 1)[0].rstrip(".")


def classify_host(host: str, names: NameResolver = NO_LOOKUPS) -> tuple[str, frozenset[HostClass]]:
    """The host as an address or name, and its classes (a name's include those of the addresses it resolves to)."""
    name, classes = _classify_written(host)
    if classes == {"name"}:
        for address in names.addresses(name):
            try:
                resolved = classify_ip(ipaddress.ip_address(address.split("%", 1)[0]))
            except ValueError:
                continue
            if "public" not in resolved:
                classes = classes | resolved
    return name, classes


def _classify_written(host: str) -> tuple[str, frozenset[HostClass]]:
    name = normalize_host(host)
    if not name:
        return name, frozenset({"unspecified"})
    if _FORBIDDEN_IN_HOST.search(name):
        # Browsers refuse such a host; C resolvers may cut it at the NUL (`localhost%00.evil.com` is localhost).
        return name, frozenset({"reserved"})
    if ":" in name:
        try:
            v6 = ipaddress.IPv6Address(name)
        except ValueError:
            return name, frozenset({"reserved"})
        return str(v6), classify_ip(v6)
    v4 = parse_ipv4(name)
    if v4 is not None:
        return str(v4), classify_ip(v4)
    if name in METADATA_NAMES:
        return name, frozenset({"metadata", "private"})
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return name, frozenset({"loopback"})
    if name.endswith((".internal", ".local", ".lan", ".intranet", ".corp", ".home.arpa")):
        return name, frozenset({"private"})
    embedded = _EMBEDDED_V4.search(name)
    if embedded is not None:
        address = parse_ipv4(embedded.group(1).replace("-", "."))
        if address is not None and "public" not in (classes := classify_ip(address)):
            return name, classes | {"name"}
    return name, frozenset({"name"})


def _hosts_of(url: str) -> list[tuple[str, str, int | None]]:
    """(scheme, host, port) under each reading a client may take: RFC 3986, and WHATWG's backslash-as-slash."""
    readings = []
    for text in dict.fromkeys((url, url.replace("\\", "/"))):
        try:
            parts = urlsplit(text)
            host = parts.hostname or ""
            if not host and parts.netloc:
                host = parts.netloc.rsplit("@", 1)[-1]
            try:
                port = parts.port
            except ValueError:
                port = None
        except ValueError:
            # An unparsable authority (e.g. a bad IPv6 literal): take what sits between // and the next /.
            authority = text.split("//", 1)[-1].split("/", 1)[0]
            host, port = authority.rsplit("@", 1)[-1], None
            parts = None
        scheme = (parts.scheme if parts is not None else text.split(":", 1)[0]).lower()
        readings.append((scheme, host, port))
    return readings


_FORBIDDEN_IN_HOST = re.compile(r"[\x00-\x20\x7f%/\\@#?<>^|]")
_SPECIAL_PREFIX = re.compile(r"^(?i:(https?|wss?|ftp)):[/\\]*")


def url_targets(url: str, *, default_scheme: str = "", names: NameResolver = NO_LOOKUPS) -> list[UrlTarget]:
    """Every place `url` may point to. A bare `host[:port][/path]` gets `default_scheme` (curl and wget do that)."""
    text = url.strip()
    special = _SPECIAL_PREFIX.match(text)
    if special is not None:
        # WHATWG: a special scheme's host follows any run of slashes and backslashes, or none at all.
        text = f"{special.group(1).lower()}://{text[special.end():]}"
    if "://" not in text:
        if not default_scheme:
            return []
        text = f"{default_scheme}://{text}"
    targets = []
    for scheme, host, port in _hosts_of(text):
        normalized, classes = classify_host(host, names)
        targets.append(UrlTarget(scheme=scheme, host=normalized, port=port, classes=classes))
    return targets


def urls_in_text(text: str, limit: int = 256) -> list[str]:
    """The scheme://... runs in a text, at most `limit` of them."""
    found = []
    for match in URL_IN_TEXT.finditer(text):
        found.append(match.group(0))
        if len(found) >= limit:
            break
    return found
