"""create_key on a 3-node cluster: writers racing to create one key, each connected to a different node, see one
winner and, for everyone else, KeyWrongLastSequenceError: never KeyNotFoundError, which nats-py's own create raises
when the read it makes after a refusal is served by a replica that has not applied the winner's value yet."""

from __future__ import annotations

import asyncio
import collections

import nats
import pytest
from nats.js.errors import KeyWrongLastSequenceError

from caduceus_bus import create_key, open_bucket

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]
ROUNDS = 150


async def test_writers_racing_on_a_new_key_see_one_winner_and_a_wrong_sequence_for_the_rest(nats_cluster) -> None:
    clients = [await nats.connect(f"nats://127.0.0.1:{port}") for port in nats_cluster.ports]
    try:
        buckets = [await open_bucket(client.jetstream(), "create_race", replicas=3) for client in clients]
        outcomes: collections.Counter[str] = collections.Counter()
        for round_ in range(ROUNDS):
            async def create(bucket, writer: int, key: str = f"turn-{round_}") -> str:
                try:
                    await create_key(bucket, key, f"writer {writer}".encode())
                    return "won"
                except KeyWrongLastSequenceError:
                    return "lost"
                except Exception as exc:  # what the callers' compare-and-set loops would turn into a denial
                    return type(exc).__name__

            # Twice per node: the losers' reads land on the leader and on followers alike.
            results = await asyncio.gather(*(create(bucket, n) for n, bucket in enumerate(buckets * 2)))
            assert results.count("won") == 1, results
            outcomes.update(results)
        assert set(outcomes) == {"won", "lost"}, outcomes
    finally:
        for client in clients:
            await client.close()
