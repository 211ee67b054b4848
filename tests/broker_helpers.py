"""Helpers of the broker tests: reading back what was published, with the raw client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


async def kafka_records(bootstrap: str, topic: str, count: int) -> list[Any]:
    """Read ``count`` records of ``topic`` from its start, as a new consumer group (on the loop)."""
    import aiokafka

    consumer = aiokafka.AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        records: list[Any] = []
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=500)
            records += [record for got in batch.values() for record in got]
        await consumer.commit()
        return records
    finally:
        await consumer.stop()


async def eventually(
    check: Callable[[], object], timeout: float = 20.0, poll: float = 0.01
) -> None:
    """Wait until ``check()`` is true, looking every ``poll`` seconds (fails after ``timeout``)."""
    with trio.fail_after(timeout):
        while True:
            if check():
                return
            await trio.sleep(poll)
