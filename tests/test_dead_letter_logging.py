"""Dead letters in the log: one WARNING line each, one summary line per actor at shutdown."""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from triobus import (
    Actor,
    ActorSystem,
    Command,
    DeadLetterReason,
    DeadLetters,
    MailboxSpec,
    Module,
    local_queue,
    open_bus,
)

MockClock = trio.testing.MockClock


@attrs.frozen
class Do(Command):
    n: int


def dead_letter_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "triobus.dead_letters"]


async def test_a_failed_message_shows_its_dead_letter_with_default_logging(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def failing(command: Do) -> None:
        raise RuntimeError("boom")

    async with open_bus(Module("m").bind_request(Do, failing)) as bus:
        await bus.send(Do(1))
        await bus.wait_quiet()
    [line] = dead_letter_lines(caplog)
    assert line.levelno == logging.WARNING
    text = line.getMessage()
    assert text.startswith("dead letter to /triobus/bus/default (reason failed): Do id=")
    assert text.endswith(": Do(n=1)")
    assert line.exc_info is not None
    assert isinstance(line.exc_info[1], RuntimeError)


def test_a_dead_letter_line_names_recipient_reason_type_id_and_a_capped_repr(
    caplog: pytest.LogCaptureFixture,
) -> None:
    letters = DeadLetters()
    letters.record(Do(1), "/app/a", DeadLetterReason.STOPPED, context={"message_id": "m-1"})
    letters.record("x" * 1_000_000, "/app/b", DeadLetterReason.MAILBOX_FULL)
    first, second = (r.getMessage() for r in dead_letter_lines(caplog))
    assert first == "dead letter to /app/a (reason stopped): Do id=m-1: Do(n=1)"
    assert second.startswith("dead letter to /app/b (reason mailbox_full): str: 'xxx")
    assert second.endswith("... (1000002 chars)")
    assert len(second) < 1_000


def test_records_without_a_log_line_are_logged_as_one_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    letters = DeadLetters()
    for n in range(3):
        letters.record(Do(n), "/app/a", DeadLetterReason.SHUTDOWN, log=False)
    letters.log_summary("/app/a", 0, DeadLetterReason.SHUTDOWN)  # nothing to say
    letters.log_summary("/app/a", 3, DeadLetterReason.SHUTDOWN)
    assert [(r.levelno, r.getMessage()) for r in dead_letter_lines(caplog)] == [
        (logging.WARNING, "/app/a: 3 message(s) dead-lettered at shutdown (reason shutdown)")
    ]
    assert len(letters) == 3


class Stuck(Actor):
    async def receive(self, message: Any) -> Any:
        await trio.sleep_forever()


async def test_an_actor_stopping_with_a_backlog_logs_one_summary_line(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Stuck, name="stuck", mailbox=MailboxSpec(capacity=math.inf))
        for n in range(3_000):
            ref.tell_nowait(n)
    # The message in hand is cut off on its own line; the backlog is one line.
    assert [r.getMessage() for r in dead_letter_lines(caplog)] == [
        "dead letter to /app/stuck (reason shutdown): int: 0",
        "/app/stuck: 2999 message(s) dead-lettered at shutdown (reason shutdown)",
    ]
    assert system.dead_letters.total == 3_000


async def test_a_bus_shutdown_logs_one_summary_line_per_endpoint(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def stuck(command: Do) -> None:
        await trio.sleep_forever()

    async with open_bus(
        Module("m").bind_request(Do, stuck),
        endpoints=[local_queue("default", capacity=math.inf)],
        drain_timeout=1,
    ) as bus:
        for n in range(3_000):
            await bus.send(Do(n))
    lines = [r.getMessage() for r in dead_letter_lines(caplog)]
    assert len(lines) == 2
    assert lines[-1] == (
        "/triobus/bus/default: 2999 message(s) dead-lettered at shutdown (reason shutdown)"
    )
    assert len(bus.dead_letters) == 3_000
