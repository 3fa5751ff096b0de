"""Secrets and classified data inside tool arguments.

Credentials are found by their well-known shapes (cloud keys, tokens, private keys) and,
for anything else, by entropy: a long token of random-looking characters is treated as a
secret. Tenants add their own classifiers (named regexes or word lists: PII, customer
data, source code) in their policy pack; each classifier that matches names a data class.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

# Text scanned per call: arguments are capped before facts are extracted, and this bounds the regex work.
MAX_SCANNED_CHARS = 512 * 1024

_CREDENTIALS = re.compile(
    r"""(?x)
    (?P<aws_access_key>\b(?:AKIA|ASIA|AIDA|AGPA)[0-9A-Z]{16}\b)
    | (?P<private_key>-----BEGIN[A-Z0-9 ]{0,40}PRIVATE\ KEY-----)
    | (?P<nats_credentials>-----BEGIN\ (?:NATS\ USER\ JWT|USER\ NKEY\ SEED)-----|\bS[UAONCPX][A-Z2-7]{56}\b)
    | (?P<github_token>\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b)
    | (?P<gitlab_token>\bglpat-[A-Za-z0-9_-]{20,}\b)
    | (?P<slack_token>\bxox[abposr]-[A-Za-z0-9-]{10,})
    | (?P<openai_key>(?<![\w-])sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,})
    | (?P<google_api_key>\bAIza[0-9A-Za-z_-]{35}\b)
    | (?P<stripe_key>\b[sr]k_live_[0-9A-Za-z]{16,}\b)
    | (?P<jwt>\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})
    | (?P<password_assignment>(?i:\b(?:password|passwd|secret|api[_-]?key|access[_-]?token)\b)\s*[:=]\s*['"]?[^\s'"]{8,})
    | (?P<url_credentials>\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]{6,}@)
    """
)
_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{32,}")
ENTROPY_BITS_PER_CHAR = 4.3


@dataclass(frozen=True)
class Classifier:
    """A tenant-defined data class: any of its regexes or words found in the arguments."""

    name: str
    patterns: tuple[re.Pattern[str], ...] = ()
    words: tuple[str, ...] = ()

    def matches(self, text: str) -> str | None:
        """The first matching snippet, or None."""
        for pattern in self.patterns:
            found = pattern.search(text)
            if found:
                return found.group(0)
        lowered = text.lower()
        for word, pattern in self._word_patterns:
            if pattern.search(lowered):
                return word
        return None

    @functools.cached_property
    def _word_patterns(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        return tuple((word, re.compile(rf"(?<!\w){re.escape(word.lower())}(?!\w)")) for word in self.words)


def strings_in(value: object, limit: int = MAX_SCANNED_CHARS) -> Iterator[str]:
    """Every string in a JSON value (keys and values, keys in sorted order so the result does not depend on how
    the JSON was spelled), until `limit` characters have been produced."""
    stack = [value]
    produced = 0
    while stack and produced < limit:
        item = stack.pop()
        if isinstance(item, str):
            piece = item[:limit - produced]
            produced += len(piece)
            yield piece
        elif isinstance(item, Mapping):
            for key in sorted(item, key=str, reverse=True):
                stack.append(item[key])
                stack.append(key)
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))


def shannon_entropy(token: str) -> float:
    counts = Counter(token)
    total = len(token)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def _high_entropy(token: str) -> bool:
    classes = sum(bool(re.search(pattern, token)) for pattern in ("[a-z]", "[A-Z]", "[0-9]"))
    # Hex digests (sha256 of a file, a git commit) are not secrets: at most 4 bits per character.
    return classes >= 3 and shannon_entropy(token) >= ENTROPY_BITS_PER_CHAR


def find_secrets(texts: Iterable[str]) -> list[str]:
    """Kinds of credentials found (`aws_access_key`, `high_entropy_token`, ...), first occurrence first."""
    kinds: list[str] = []
    for text in texts:
        for match in _CREDENTIALS.finditer(text):
            kind = match.lastgroup or "credential"
            if kind not in kinds:
                kinds.append(kind)
        if "high_entropy_token" not in kinds and any(_high_entropy(t) for t in _TOKEN.findall(text)):
            kinds.append("high_entropy_token")
    return kinds


def classify(texts: Iterable[str], classifiers: Iterable[Classifier]) -> dict[str, str]:
    """Data class name -> the snippet that matched, for each classifier that matches any text."""
    pending = list(classifiers)
    found: dict[str, str] = {}
    for text in texts:
        for classifier in list(pending):
            snippet = classifier.matches(text)
            if snippet is not None:
                found[classifier.name] = snippet
                pending.remove(classifier)
        if not pending:
            break
    return found
