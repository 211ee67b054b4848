"""The durable dead-letter store: a durable queue's letters in its SQLite file.

``queue.dead_letters`` is a :class:`DeadLetterStore` over the queue's SQLite
file: letters keep their exception's type, text and traceback, their
attempts and (for bytes that do not decode) the raw bytes; they survive a
restart of the bus; filters combine with AND and ages follow the bus's wall
clock (trio's, here a ``MockClock``); a replay puts the message back in the
queue with its id and a fresh attempt budget. Real SQLite files in
``tmp_path`` throughout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from triobus import (
    Command,
    DeadLetterFilter,
    DeadLetterNotFound,
    DeadLetterReason,
    DeadLetterStore,
    Envelope,
    Event,
    MessageContext,
    Module,
    ReplayError,
    SqliteDeadLetters,
    StoreError,
    current_context,
    default_message_name,
    durable_queue,
    open_bus,
    route,
)

FAILED = DeadLetterReason.FAILED
UNDECODABLE = DeadLetterReason.UNDECODABLE


class PaymentError(Exception):
    pass


class CardDeclined(PaymentError):
    pass


@attrs.frozen
class Job(Command):
    n: int


@attrs.frozen
class Audit(Command):
    n: int


@attrs.frozen
class Paid(Event):
    n: int


class Breakable:
    """A handler that raises ``error`` while ``broken``, and records what it handled."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error or PaymentError("the card service is down")
        self.broken = True
        self.calls = 0
        self.handled: list[MessageContext] = []

    async def __call__(self, message: Any) -> None:
        self.calls += 1
        if self.broken:
            raise self.error
        self.handled.append(current_context())


def jobs_bus(path: Path, jobs: Breakable, audits: Breakable | None = None, retries: int = 1) -> Any:
    module = Module("m").bind_request(Job, jobs).bind_request(Audit, audits or Breakable())
    queue = durable_queue("jobs", path=path, retries=retries)
    routing = [route(Job).to("jobs"), route(Audit).to("jobs")]
    return queue, open_bus(module, endpoints=[queue], routing=routing)


PAID_NAME = default_message_name(Paid(0))


def envelope(message_id: str, message: Any, name: str) -> Envelope:
    return Envelope(message_id, name, 1, message_id, None, {}, None, 1.0, message)


# ---------------------------------------------------------------- recording and reading


async def test_a_message_that_fails_every_attempt_is_stored_with_its_error(tmp_path: Path) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(tmp_path / "q.db", jobs, retries=2)
    async with bus_runner as bus:
        await bus.send(Job(7), headers={"tenant": "acme"}, correlation_id="chain")
        await bus.wait_quiet()
        store = queue.dead_letters
        assert isinstance(store, SqliteDeadLetters) and isinstance(store, DeadLetterStore)
        [letter] = await store.list()
    assert jobs.calls == 3
    assert (letter.reason, letter.endpoint, letter.recipient) == (FAILED, "jobs", "jobs")
    assert (letter.exception_type, letter.error) == (f"{__name__}.PaymentError", jobs.error.args[0])
    assert letter.traceback is not None
    assert "Traceback (most recent call last)" in letter.traceback
    assert "raise self.error" in letter.traceback
    assert letter.attempts == 3
    assert letter.message == Job(7)
    assert letter.message_name is not None and letter.message_name.endswith("Job")
    assert letter.exception is None and letter.raw is None
    assert letter.context is not None
    assert letter.context["message_id"] == letter.message_id
    assert (letter.context["correlation_id"], letter.context["headers"]) == (
        "chain",
        {"tenant": "acme"},
    )
    assert letter.context["attempts"] == 3


async def test_letters_survive_a_restart_of_the_bus_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    jobs = Breakable()
    queue, bus_runner = jobs_bus(path, jobs)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await bus.send(Job(2))
        await bus.wait_quiet()
        before = await queue.dead_letters.list()
    assert len(before) == 2

    jobs = Breakable()
    jobs.broken = False
    queue, bus_runner = jobs_bus(path, jobs)
    async with bus_runner as bus:
        after = await queue.dead_letters.list()
        assert [letter.letter_id for letter in after] == [letter.letter_id for letter in before]
        assert after == before  # the content: message, error, traceback, attempts, ids
        assert [letter.traceback for letter in after] == [letter.traceback for letter in before]
        assert await queue.dead_letters.replay(DeadLetterFilter()) == 2
        await bus.wait_quiet()
        assert await queue.dead_letters.count() == 0
    assert [context.message_id for context in jobs.handled] == [
        letter.message_id for letter in before
    ]


async def test_the_store_needs_its_endpoint_running_and_says_so(tmp_path: Path) -> None:
    queue, bus_runner = jobs_bus(tmp_path / "q.db", Breakable())
    with pytest.raises(StoreError, match=r"'jobs' is not running: its dead letters stay in"):
        _ = queue.dead_letters
    async with bus_runner:
        store = queue.dead_letters
        assert await store.count() == 0
    with pytest.raises(StoreError, match=r"'jobs' has stopped: its dead letters stay in"):
        await store.list()


# ---------------------------------------------------------------- filters


async def test_filters_by_name_exception_type_and_age_combine_with_and(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    jobs = Breakable()
    audits = Breakable(CardDeclined("declined"))
    queue, bus_runner = jobs_bus(tmp_path / "q.db", jobs, audits, retries=0)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await bus.wait_quiet()
        mock_clock.jump(100)
        await bus.send(Audit(2))
        await bus.wait_quiet()
        jobs.error = CardDeclined("declined too")
        mock_clock.jump(100)
        await bus.send(Job(3))
        await bus.wait_quiet()
        store = queue.dead_letters
        everything = await store.list()
        assert [letter.message for letter in everything] == [Job(1), Audit(2), Job(3)]
        job_name = everything[0].message_name
        assert job_name is not None

        async def messages(**criteria: Any) -> list[Any]:
            found = [letter.message for letter in await store.list(**criteria)]
            assert await store.count(**criteria) == len(found)
            assert await store.count(DeadLetterFilter(**criteria)) == len(found)
            return found

        assert await messages(message_name=job_name) == [Job(1), Job(3)]
        assert await messages(exception_type=CardDeclined) == [Audit(2), Job(3)]
        # No live exception is stored: a class matches its exact qualified name.
        assert await messages(exception_type=PaymentError) == [Job(1)]
        assert await messages(exception_type=f"{__name__}.CardDeclined") == [Audit(2), Job(3)]
        assert await messages(older_than=150) == [Job(1)]
        assert await messages(newer_than=100) == [Audit(2), Job(3)]
        assert await messages(older_than=50, newer_than=150) == [Audit(2)]
        assert await messages(message_name=job_name, exception_type=CardDeclined) == [Job(3)]
        assert await messages(message_name=job_name, older_than=50) == [Job(1)]
        assert await messages(reason="failed", endpoint="jobs", recipient="jobs") == [
            Job(1),
            Audit(2),
            Job(3),
        ]
        assert await messages(endpoint="elsewhere") == []
        assert await messages(reason="undecodable") == []
        assert [letter.message for letter in await store.list(limit=2)] == [Job(1), Audit(2)]
        assert await store.list(limit=0) == []
        with pytest.raises(ValueError, match=r"limit= takes a whole number >= 0"):
            await store.list(limit=-1)
        with pytest.raises(TypeError, match=r"unknown dead-letter filter\(s\) colour"):
            await store.list(colour="red")  # type: ignore[call-arg]


async def test_get_reads_one_letter_and_an_unknown_id_is_not_found(tmp_path: Path) -> None:
    queue, bus_runner = jobs_bus(tmp_path / "q.db", Breakable(), retries=0)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await bus.wait_quiet()
        [letter] = await queue.dead_letters.list()
        got = await queue.dead_letters.get(letter.letter_id)
        assert (got.letter_id, got) == (letter.letter_id, letter)
        with pytest.raises(DeadLetterNotFound, match=r"no dead letter 'dl-nope' of endpoint"):
            await queue.dead_letters.get("dl-nope")


# ---------------------------------------------------------------- replay


async def test_a_replayed_message_keeps_its_id_and_gets_a_fresh_attempt_budget(
    tmp_path: Path,
) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(tmp_path / "q.db", jobs, retries=1)
    async with bus_runner as bus:
        await bus.send(Job(1), headers={"tenant": "acme"})
        await bus.wait_quiet()
        store = queue.dead_letters
        [first] = await store.list()
        assert (first.attempts, jobs.calls) == (2, 2)

        assert await store.replay(first.letter_id) == 1  # still broken: fails again
        await bus.wait_quiet()
        [second] = await store.list()
        assert second.letter_id != first.letter_id
        assert second.message_id == first.message_id
        assert second.attempts == 2  # a fresh budget, not 4
        assert jobs.calls == 4
        assert second.context == first.context

        jobs.broken = False
        assert await store.replay(second.letter_id) == 1
        await bus.wait_quiet()
        assert await store.count() == 0
        [handled] = jobs.handled
        assert (handled.message_id, handled.headers) == (first.message_id, {"tenant": "acme"})
        assert bus.in_flight == 0
        with pytest.raises(DeadLetterNotFound, match=r"so none was replayed"):
            await store.replay(second.letter_id)


async def test_replay_by_filter_takes_the_matching_letters_alone(tmp_path: Path) -> None:
    jobs, audits = Breakable(), Breakable()
    queue, bus_runner = jobs_bus(tmp_path / "q.db", jobs, audits, retries=0)
    async with bus_runner as bus:
        for n in range(3):
            await bus.send(Job(n))
            await bus.send(Audit(n))
        await bus.wait_quiet()
        store = queue.dead_letters
        [job_letter, *_] = await store.list()
        jobs.broken = audits.broken = False
        assert await store.replay(message_name=job_letter.message_name) == 3
        await bus.wait_quiet()
        assert len(jobs.handled) == 3 and audits.handled == []
        assert [letter.message for letter in await store.list()] == [Audit(0), Audit(1), Audit(2)]
        assert await store.replay(DeadLetterFilter()) == 3
        await bus.wait_quiet()
        assert len(audits.handled) == 3
        assert await store.count() == 0


async def test_replaying_one_failed_subscriber_runs_that_subscriber_alone(tmp_path: Path) -> None:
    calls: list[str] = []
    mails = Breakable()

    async def books(event: Paid) -> None:
        calls.append("books")

    async def mail(event: Paid) -> None:
        calls.append("mails")
        await mails(event)

    queue = durable_queue("events", path=tmp_path / "q.db", retries=0)
    async with open_bus(
        Module("m").bind_event(Paid, [books, mail]),
        endpoints=[queue],
        routing=[route(Paid).to("events")],
    ) as bus:
        await bus.publish(Paid(1))
        await bus.wait_quiet()
        assert calls == ["books", "mails"]
        [letter] = await queue.dead_letters.list()
        assert letter.context is not None and "mail" in letter.context["handler"]
        mails.broken = False
        assert await queue.dead_letters.replay(letter.letter_id) == 1
        await bus.wait_quiet()
        assert calls == ["books", "mails", "mails"]
        assert await queue.dead_letters.count() == 0


async def test_a_replay_that_meets_a_letter_replayed_meanwhile_skips_it(tmp_path: Path) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(tmp_path / "q.db", jobs, retries=0)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await bus.wait_quiet()
        jobs.broken = False
        assert await queue.dead_letters.count() == 1
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(queue.dead_letters.replay, DeadLetterFilter())
        await bus.wait_quiet()
        assert len(jobs.handled) == 1  # queued once, handled once
        assert await queue.dead_letters.count() == 0
        assert bus.in_flight == 0


# ---------------------------------------------------------------- purge


async def test_purge_removes_the_selected_letters(tmp_path: Path) -> None:
    queue, bus_runner = jobs_bus(tmp_path / "q.db", Breakable(), Breakable(), retries=0)
    async with bus_runner as bus:
        for n in range(2):
            await bus.send(Job(n))
            await bus.send(Audit(n))
        await bus.wait_quiet()
        store = queue.dead_letters
        first, second, *_ = await store.list()
        assert await store.purge(first.letter_id) == 1
        with pytest.raises(DeadLetterNotFound, match=r"so none was purged"):
            await store.purge([second.letter_id, first.letter_id])
        assert await store.count() == 3  # nothing removed
        assert await store.purge(message_name=second.message_name) == 2
        assert [letter.message for letter in await store.list()] == [Job(1)]
        with pytest.raises(TypeError, match=r"purge\(\) needs a selection"):
            await store.purge()
        assert await store.purge(DeadLetterFilter()) == 1
        assert await store.count() == 0


# ---------------------------------------------------------------- bytes that do not decode


async def test_undecodable_bytes_are_a_letter_with_the_raw_bytes_that_cannot_be_replayed(
    tmp_path: Path,
) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(tmp_path / "q.db", jobs, retries=0)
    async with bus_runner as bus:
        await queue.deliver_raw(b"\x00 not an envelope")
        await bus.send(Job(1))
        await bus.wait_quiet()
        store = queue.dead_letters
        [bad] = await store.list(reason=UNDECODABLE)
        assert bad.raw == b"\x00 not an envelope"
        assert (bad.message, bad.context, bad.message_name) == (None, None, None)
        assert bad.exception_type == "triobus.MalformedEnvelope"
        assert bad.error is not None and bad.error.startswith("malformed: ")
        [failed] = await store.list(reason=FAILED)

        jobs.broken = False
        with pytest.raises(ReplayError, match=r"1 of the 2 selected .* so none was") as info:
            await store.replay(DeadLetterFilter())
        assert info.value.letter_ids == (bad.letter_id,)
        assert bad.letter_id in str(info.value) and "do not decode (malformed" in str(info.value)
        assert await store.count() == 2  # the failed one was not replayed either
        assert jobs.handled == []
        with pytest.raises(ReplayError, match=bad.letter_id):
            await store.replay(bad.letter_id)
        assert await store.replay(failed.letter_id) == 1
        await bus.wait_quiet()
        assert len(jobs.handled) == 1
        assert [letter.letter_id for letter in await store.list()] == [bad.letter_id]


async def test_an_envelope_no_handler_here_takes_is_a_decoded_no_handler_letter(
    tmp_path: Path,
) -> None:
    queue = durable_queue("jobs", path=tmp_path / "q.db", retries=0)
    module = Module("m").bind_request(Job, Breakable()).bind_event(Paid, [Breakable()])
    async with open_bus(module, endpoints=[queue], routing=[route(Job).to("jobs")]) as bus:
        data = queue.codec.encode(envelope("m-1", Paid(5), PAID_NAME))
        await queue.deliver_raw(data)
        await bus.wait_quiet()
        [letter] = await queue.dead_letters.list()
        assert (letter.reason, letter.message, letter.raw) == (
            DeadLetterReason.NO_HANDLER,
            Paid(5),
            None,  # it decodes: the message is the letter, not its bytes
        )
        assert letter.message_id == "m-1"
        assert letter.error == f"no handler for {PAID_NAME!r} is bound at endpoint 'jobs'"
        # Replayable (say, once the handler is bound here); still none: a new letter.
        assert await queue.dead_letters.replay(letter.letter_id) == 1
        await bus.wait_quiet()
        [again] = await queue.dead_letters.list()
        assert (again.message_id, again.reason) == ("m-1", DeadLetterReason.NO_HANDLER)
        assert again.letter_id != letter.letter_id
