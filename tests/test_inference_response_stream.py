"""Response rules on a streamed answer hold whatever the chunking: an upstream that sends a secret or a denied
word a few characters at a time (as every real one does) gets exactly what the whole answer would get."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caduceus_contracts import DataClassSpec
from caduceus_inference.domain import HeldInResponse, ResponseStream, found_class, redact_all

SECRET = DataClassSpec(name="secret")  # the built-in credential patterns
CUSTOMER = DataClassSpec(name="customer_data", patterns=(r"CUST-[0-9]{6}",))
CLASSIFIED = DataClassSpec(name="classified", words=("top secret",))
HOLDBACK = 128

SECRETS = [
    "ghp_" + "a1B2" * 9,
    "github_pat_" + "x" * 40,
    "AKIA" + "ABCDEFGHIJKLMNOP",
    "sk-" + "proj_" + "Z" * 30,
    "xoxb-" + "1234567890-abcdef",
    "Bearer " + "abc.def-ghi_jkl" * 3,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl",
    "password=hunter2-hunter2",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
]
prose = st.text(alphabet="abcdefghij klmnop,.\n", max_size=300)


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:])]


def streamed(chunks: list[str], *, deny=(), redact=()) -> str:
    stream = ResponseStream(tuple(deny), tuple(redact), HOLDBACK)
    return "".join(stream.feed(chunk) for chunk in chunks) + stream.flush()


@settings(max_examples=300, deadline=None)
@given(before=prose, secret=st.sampled_from(SECRETS), after=prose,
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=60))
def test_a_secret_split_anywhere_is_redacted_as_if_the_answer_were_whole(before, secret, after, cuts):
    answer = f"{before} {secret} {after}"
    sent = streamed(chunked(answer, cuts), redact=[SECRET, CUSTOMER])
    assert sent == redact_all(answer, (SECRET, CUSTOMER))
    assert secret not in sent and "[REDACTED:" in sent


@settings(max_examples=300, deadline=None)
@given(before=prose, word=st.sampled_from(["top secret", "TOP SECRET", "Top Secret", "CUST-123456"]), after=prose,
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=60))
def test_a_denied_class_split_anywhere_stops_the_answer_before_any_of_it_is_sent(before, word, after, cuts):
    answer = f"{before} {word} {after}"
    assert found_class(answer, (CLASSIFIED, CUSTOMER))
    stream = ResponseStream((CLASSIFIED, CUSTOMER), (SECRET,), HOLDBACK)
    sent = ""
    with pytest.raises(HeldInResponse):
        for chunk in chunked(answer, cuts):
            sent += stream.feed(chunk)
        sent += stream.flush()
    # Not even a prefix of the denied text went out.
    assert word[:3].lower() not in sent.lower()


@given(answer=prose, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=60))
def test_an_answer_without_matches_comes_through_unchanged_and_in_order(answer, cuts):
    assert streamed(chunked(answer, cuts), deny=[CLASSIFIED], redact=[SECRET]) == answer


def test_text_is_held_back_only_while_it_could_start_a_match_and_not_at_all_without_rules():
    stream = ResponseStream((), (SECRET,), HOLDBACK)
    assert stream.feed("x" * 200) == "x" * (200 - HOLDBACK)  # streams on, 128 characters behind
    assert stream.feed("ghp_") == "xxxx"
    free = ResponseStream((), (), HOLDBACK)
    assert free.feed("ghp_abc") == "ghp_abc"  # no rule, no delay


def test_a_finished_secret_does_not_hold_up_the_rest_of_the_answer():
    stream = ResponseStream((), (SECRET,), HOLDBACK)
    text = "use " + SECRETS[0] + " then " + "carry on. " * 100
    sent = "".join(stream.feed(text[i:i + 3]) for i in range(0, len(text), 3))
    assert len(stream.held) <= HOLDBACK + 3  # streaming went on past the secret
    assert sent.startswith("use [REDACTED:github_token] then carry on.")


def test_a_private_key_holds_everything_after_it_to_the_end():
    """A key block cut off is redacted to the end of the text, so nothing after its first line goes out."""
    stream = ResponseStream((), (SECRET,), HOLDBACK)
    text = "here: -----BEGIN PRIVATE KEY-----\n" + "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n" * 400
    sent = "".join(stream.feed(text[i:i + 3]) for i in range(0, len(text), 3)) + stream.flush()
    assert sent == "here: [REDACTED:private_key]"
