"""through_elections: a JetStream operation tried again while a cluster elects a leader, within a bound; any other
error (an over-limit, a missing key) at once."""

from __future__ import annotations

import time

import nats.errors
import pytest
from nats.js.errors import KeyNotFoundError, NoStreamResponseError, ServiceUnavailableError

from caduceus_bus import through_elections

pytestmark = pytest.mark.asyncio


def failing(times: int, error: Exception):
    calls = []

    async def operation() -> str:
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise error
        return "done"

    return operation, calls


@pytest.mark.parametrize("error", [nats.errors.TimeoutError(), NoStreamResponseError(), ServiceUnavailableError(),
                                   nats.errors.NoRespondersError()])
async def test_what_an_election_answers_is_tried_again_until_it_works(error) -> None:
    operation, calls = failing(3, error)
    assert await through_elections(operation, within_s=5) == "done"
    assert len(calls) == 4


async def test_an_election_longer_than_the_bound_ends_in_its_error() -> None:
    operation, calls = failing(1000, nats.errors.TimeoutError())
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await through_elections(operation, within_s=0.5)
    assert 0.3 < time.monotonic() - started < 5 and len(calls) > 2  # it gave up, at about the bound


async def test_any_other_error_is_raised_at_once() -> None:
    operation, calls = failing(1, KeyNotFoundError())
    with pytest.raises(KeyNotFoundError):
        await through_elections(operation, within_s=5)
    assert len(calls) == 1
