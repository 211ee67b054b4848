"""The durable dead-letter store: a durable queue's letters in its database.

``queue.dead_letters`` is a :class:`DeadLetterStore` over the queue's
database (each test runs on SQLite and on PostgreSQL): letters keep their
exception's type, text and traceback, their attempts and (for bytes that
do not decode) the raw bytes; they survive a restart of the bus; filters
combine with AND and ages follow the bus's wall clock (trio's, here a
``MockClock``); a replay puts the message back in the queue with its id and
a fresh attempt budget. Real databases throughout.

The fuzz test at the end feeds 10,000 hypothesis-generated malformed
envelopes through ``deliver_raw`` on SQLite (1,000 on PostgreSQL), with
good messages in between: each bad one is a dead letter with its reason,
and each good one is handled once.
"""

from __future__ import annotations

import collections
import itertools
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from durable_helpers import StoreAt
from triobus import (
    Codec,
    Command,
    DeadLetterFilter,
    DeadLetterNotFound,
    DeadLetterReason,
    DeadLetterStore,
    DurableDeadLetters,
    Envelope,
    EnvelopeError,
    Event,
    Limits,
    MessageContext,
    MessageTypes,
    Module,
    ReplayError,
    StoreError,
    current_context,
    default_message_name,
    durable_queue,
    open_bus,
    route,
)
from triobus.durability import ENVELOPE_REASONS

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


def jobs_bus(
    store_at: StoreAt, jobs: Breakable, audits: Breakable | None = None, retries: int = 1
) -> Any:
    module = Module("m").bind_request(Job, jobs).bind_request(Audit, audits or Breakable())
    queue = durable_queue("jobs", **store_at.options(), retries=retries)
    routing = [route(Job).to("jobs"), route(Audit).to("jobs")]
    return queue, open_bus(module, endpoints=[queue], routing=routing)


PAID_NAME = default_message_name(Paid(0))


async def quiet(bus: Any, queue: Any) -> None:
    """Wait until nothing is in flight; then the queue's file has nothing due either."""
    await bus.wait_quiet()
    assert (await queue.counts()).incoming == 0


def envelope(message_id: str, message: Any, name: str) -> Envelope:
    return Envelope(message_id, name, 1, message_id, None, {}, None, 1.0, message)


# ---------------------------------------------------------------- recording and reading


async def test_a_message_that_fails_every_attempt_is_stored_with_its_error(
    store_at: StoreAt,
) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(store_at, jobs, retries=2)
    async with bus_runner as bus:
        await bus.send(Job(7), headers={"tenant": "acme"}, correlation_id="chain")
        await quiet(bus, queue)
        store = queue.dead_letters
        assert isinstance(store, DurableDeadLetters) and isinstance(store, DeadLetterStore)
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


async def test_letters_survive_a_restart_of_the_bus_on_the_same_database(store_at: StoreAt) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(store_at, jobs)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await bus.send(Job(2))
        await quiet(bus, queue)
        before = await queue.dead_letters.list()
    assert len(before) == 2

    jobs = Breakable()
    jobs.broken = False
    queue, bus_runner = jobs_bus(store_at, jobs)
    async with bus_runner as bus:
        after = await queue.dead_letters.list()
        assert [letter.letter_id for letter in after] == [letter.letter_id for letter in before]
        assert after == before  # the content: message, error, traceback, attempts, ids
        assert [letter.traceback for letter in after] == [letter.traceback for letter in before]
        assert await queue.dead_letters.replay(DeadLetterFilter()) == 2
        await quiet(bus, queue)
        assert await queue.dead_letters.count() == 0
    assert [context.message_id for context in jobs.handled] == [
        letter.message_id for letter in before
    ]


async def test_the_store_needs_its_endpoint_running_and_says_so(store_at: StoreAt) -> None:
    queue, bus_runner = jobs_bus(store_at, Breakable())
    with pytest.raises(StoreError, match=r"'jobs' is not running: its dead letters stay in"):
        _ = queue.dead_letters
    async with bus_runner:
        store = queue.dead_letters
        assert await store.count() == 0
    with pytest.raises(StoreError, match=r"'jobs' has stopped: its dead letters stay in"):
        await store.list()


# ---------------------------------------------------------------- filters


async def test_filters_by_name_exception_type_and_age_combine_with_and(
    store_at: StoreAt, mock_clock: trio.testing.MockClock
) -> None:
    jobs = Breakable()
    audits = Breakable(CardDeclined("declined"))
    queue, bus_runner = jobs_bus(store_at, jobs, audits, retries=0)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await quiet(bus, queue)
        mock_clock.jump(100)
        await bus.send(Audit(2))
        await quiet(bus, queue)
        jobs.error = CardDeclined("declined too")
        mock_clock.jump(100)
        await bus.send(Job(3))
        await quiet(bus, queue)
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


async def test_get_reads_one_letter_and_an_unknown_id_is_not_found(store_at: StoreAt) -> None:
    queue, bus_runner = jobs_bus(store_at, Breakable(), retries=0)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await quiet(bus, queue)
        [letter] = await queue.dead_letters.list()
        got = await queue.dead_letters.get(letter.letter_id)
        assert (got.letter_id, got) == (letter.letter_id, letter)
        with pytest.raises(DeadLetterNotFound, match=r"no dead letter 'dl-nope' of endpoint"):
            await queue.dead_letters.get("dl-nope")


# ---------------------------------------------------------------- replay


async def test_a_replayed_message_keeps_its_id_and_gets_a_fresh_attempt_budget(
    store_at: StoreAt,
) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(store_at, jobs, retries=1)
    async with bus_runner as bus:
        await bus.send(Job(1), headers={"tenant": "acme"})
        await quiet(bus, queue)
        store = queue.dead_letters
        [first] = await store.list()
        assert (first.attempts, jobs.calls) == (2, 2)

        assert await store.replay(first.letter_id) == 1  # still broken: fails again
        await quiet(bus, queue)
        [second] = await store.list()
        assert second.letter_id != first.letter_id
        assert second.message_id == first.message_id
        assert second.attempts == 2  # a fresh budget, not 4
        assert jobs.calls == 4
        assert second.context == first.context

        jobs.broken = False
        assert await store.replay(second.letter_id) == 1
        await quiet(bus, queue)
        assert await store.count() == 0
        [handled] = jobs.handled
        assert (handled.message_id, handled.headers) == (first.message_id, {"tenant": "acme"})
        assert bus.in_flight == 0
        with pytest.raises(DeadLetterNotFound, match=r"so none was replayed"):
            await store.replay(second.letter_id)


async def test_replay_by_filter_takes_the_matching_letters_alone(store_at: StoreAt) -> None:
    jobs, audits = Breakable(), Breakable()
    queue, bus_runner = jobs_bus(store_at, jobs, audits, retries=0)
    async with bus_runner as bus:
        for n in range(3):
            await bus.send(Job(n))
            await bus.send(Audit(n))
        await quiet(bus, queue)
        store = queue.dead_letters
        [job_letter, *_] = await store.list()
        jobs.broken = audits.broken = False
        assert await store.replay(message_name=job_letter.message_name) == 3
        await quiet(bus, queue)
        assert len(jobs.handled) == 3 and audits.handled == []
        assert [letter.message for letter in await store.list()] == [Audit(0), Audit(1), Audit(2)]
        assert await store.replay(DeadLetterFilter()) == 3
        await quiet(bus, queue)
        assert len(audits.handled) == 3
        assert await store.count() == 0


async def test_replaying_one_failed_subscriber_runs_that_subscriber_alone(
    store_at: StoreAt,
) -> None:
    calls: list[str] = []
    mails = Breakable()

    async def books(event: Paid) -> None:
        calls.append("books")

    async def mail(event: Paid) -> None:
        calls.append("mails")
        await mails(event)

    queue = durable_queue("events", **store_at.options(), retries=0)
    async with open_bus(
        Module("m").bind_event(Paid, [books, mail]),
        endpoints=[queue],
        routing=[route(Paid).to("events")],
    ) as bus:
        await bus.publish(Paid(1))
        await quiet(bus, queue)
        assert calls == ["books", "mails"]
        [letter] = await queue.dead_letters.list()
        assert letter.context is not None and "mail" in letter.context["handler"]
        mails.broken = False
        assert await queue.dead_letters.replay(letter.letter_id) == 1
        await quiet(bus, queue)
        assert calls == ["books", "mails", "mails"]
        assert await queue.dead_letters.count() == 0


async def test_a_replay_that_meets_a_letter_replayed_meanwhile_skips_it(store_at: StoreAt) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(store_at, jobs, retries=0)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await quiet(bus, queue)
        jobs.broken = False
        assert await queue.dead_letters.count() == 1
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(queue.dead_letters.replay, DeadLetterFilter())
        await quiet(bus, queue)
        assert len(jobs.handled) == 1  # queued once, handled once
        assert await queue.dead_letters.count() == 0
        assert bus.in_flight == 0


# ---------------------------------------------------------------- purge


async def test_purge_removes_the_selected_letters(store_at: StoreAt) -> None:
    queue, bus_runner = jobs_bus(store_at, Breakable(), Breakable(), retries=0)
    async with bus_runner as bus:
        for n in range(2):
            await bus.send(Job(n))
            await bus.send(Audit(n))
        await quiet(bus, queue)
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
    store_at: StoreAt,
) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(store_at, jobs, retries=0)
    async with bus_runner as bus:
        await queue.deliver_raw(b"\x00 not an envelope")
        await bus.send(Job(1))
        await quiet(bus, queue)
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
        await quiet(bus, queue)
        assert len(jobs.handled) == 1
        assert [letter.letter_id for letter in await store.list()] == [bad.letter_id]


async def test_an_envelope_no_handler_here_takes_is_a_decoded_no_handler_letter(
    store_at: StoreAt,
) -> None:
    queue = durable_queue("jobs", **store_at.options(), retries=0)
    module = Module("m").bind_request(Job, Breakable()).bind_event(Paid, [Breakable()])
    async with open_bus(module, endpoints=[queue], routing=[route(Job).to("jobs")]) as bus:
        data = queue.codec.encode(envelope("m-1", Paid(5), PAID_NAME))
        await queue.deliver_raw(data)
        await quiet(bus, queue)
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
        await quiet(bus, queue)
        [again] = await queue.dead_letters.list()
        assert (again.message_id, again.reason) == ("m-1", DeadLetterReason.NO_HANDLER)
        assert again.letter_id != letter.letter_id


async def test_an_envelope_whose_id_holds_a_nul_is_an_undecodable_letter_without_its_id(
    store_at: StoreAt,
) -> None:
    jobs = Breakable()
    jobs.broken = False
    queue, bus_runner = jobs_bus(store_at, jobs)
    async with bus_runner as bus:
        doc = orjson.loads(queue.codec.encode(envelope("j-1", Job(1), JOB_NAME)))
        data = orjson.dumps({**doc, "id": "j-\x00"})
        await queue.deliver_raw(data)  # a text column holds no NUL: refused, not stored
        await bus.send(Job(2))
        await quiet(bus, queue)
        [letter] = await queue.dead_letters.list()
    assert (letter.reason, letter.message_id, letter.raw) == (UNDECODABLE, None, data)
    assert letter.error is not None and letter.error.startswith("malformed: ")
    assert len(jobs.handled) == 1  # the next message went on


async def test_an_error_text_holding_a_nul_is_stored_with_it_escaped(store_at: StoreAt) -> None:
    jobs = Breakable(PaymentError("card\x00number"))
    queue, bus_runner = jobs_bus(store_at, jobs, retries=0)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await quiet(bus, queue)
        [letter] = await queue.dead_letters.list()
    assert letter.error == "card\\x00number"
    assert letter.traceback is not None and "PaymentError: card\\x00number" in letter.traceback


# ---------------------------------------------------------------- fuzz: malformed envelopes


@attrs.frozen
class Stray(Command):
    """Registered with the codec, bound nowhere: decodes, then finds no handler."""

    n: int


JOB_NAME = default_message_name(Job(0))
STRAY_NAME = default_message_name(Stray(0))
FUZZ_TYPES = MessageTypes().register(Job).register(Stray)
FUZZ_CODEC = Codec(FUZZ_TYPES)  # what the queue decodes with: the same types, default limits
LIMITS = Limits()
VALID = [
    FUZZ_CODEC.encode(envelope("fz-1", Job(1), JOB_NAME)),
    FUZZ_CODEC.encode(attrs.evolve(envelope("fz-2", Job(2), JOB_NAME), headers={"tenant": "a"})),
]
DOCS: list[dict[str, Any]] = [orjson.loads(data) for data in VALID]
ENVELOPE_KEYS = list(DOCS[0])
#: Bigger than ``Limits.max_bytes``: a rare payload (each one is 4 MiB in the store).
HUGE = b'{"id":"huge","x":"' + b"x" * LIMITS.max_bytes + b'"}'

# Strategies are made once (making one costs more than drawing from it).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
not_objects = scalars | st.lists(scalars, max_size=3)
json_values = not_objects | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
docs = st.sampled_from(range(len(DOCS)))
positions = st.integers(min_value=0, max_value=10_000)


def edited(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """A valid envelope with ``key`` set to a drawn value."""
    return st.builds(lambda doc, value: orjson.dumps({**DOCS[doc], key: value}), docs, values)


def mutated(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, byte in changes:
        buffer[position % len(buffer)] = byte
    return bytes(buffer)


def without(doc: int, key: str) -> bytes:
    return orjson.dumps({name: value for name, value in DOCS[doc].items() if name != key})


def too_long(doc: int, field: str, extra: int) -> bytes:
    if field == "headers":
        value: Any = {"big": "x" * (LIMITS.max_header_value_length + 1 + extra)}
    elif field in ("name", "reply_to"):
        value = "x" * (LIMITS.max_name_length + 1 + extra)
    else:
        value = "x" * (LIMITS.max_id_length + 1 + extra)
    return orjson.dumps({**DOCS[doc], field: value})


def stray(doc: int, message_id: str) -> bytes:
    return orjson.dumps({**DOCS[doc], "name": STRAY_NAME, "id": message_id})


#: One branch per kind of bad input; a few may decode after all (filtered out below).
malformed_envelopes = st.one_of(
    st.binary(max_size=200),  # arbitrary bytes
    st.builds(lambda data, cut: data[: cut % len(data)], st.sampled_from(VALID), positions),
    st.builds(
        mutated,
        st.sampled_from(VALID),
        st.lists(st.tuples(positions, st.integers(0, 255)), min_size=1, max_size=4),
    ),
    not_objects.map(orjson.dumps),  # valid JSON, no object
    st.builds(without, docs, st.sampled_from(ENVELOPE_KEYS)),  # a field missing
    st.builds(  # a field of the wrong type
        lambda doc, key, value: orjson.dumps({**DOCS[doc], key: value}),
        docs,
        st.sampled_from(ENVELOPE_KEYS),
        json_values,
    ),
    edited("name", st.text(min_size=1, max_size=30)),  # a name nobody registered
    edited("version", st.integers(min_value=2, max_value=2**40)),  # newer than known
    edited("version", st.integers(min_value=-(2**63), max_value=0)),
    edited(  # too many headers
        "headers",
        st.integers(LIMITS.max_headers + 1, 200).map(lambda n: {f"h{i}": "v" for i in range(n)}),
    ),
    st.builds(  # a name, an id or a header over its limit
        too_long,
        docs,
        st.sampled_from(["name", "reply_to", "id", "correlation_id", "causation_id", "headers"]),
        st.integers(0, 40),
    ),
    edited(  # a body that does not fit the class
        "body",
        st.fixed_dictionaries({"n": st.none() | st.floats() | st.text(max_size=8)})
        | not_objects
        | st.dictionaries(st.text(max_size=3), scalars, max_size=2),
    ),
    st.builds(stray, docs, st.text(min_size=1, max_size=20)),  # decodes; no handler here
    st.integers(0, 127).map(lambda i: HUGE if i == 127 else b"{}"),  # rarely: oversize
)


def handled_by_a_job_handler(data: bytes) -> bool:
    """Whether these bytes would be handled (a Job envelope): no dead letter then."""
    try:
        return FUZZ_CODEC.decode(data).message_name == JOB_NAME
    except EnvelopeError:
        return False


bad_payloads = malformed_envelopes.filter(lambda data: not handled_by_a_job_handler(data))
#: Examples x payloads per example: the 10,000 of the issue on SQLite (1,000 on
#: PostgreSQL, where each payload is a round trip to the server).
FUZZ_EXAMPLES = {"sqlite": 100, "postgresql": 10}
BAD_PER_EXAMPLE = 100
#: A good message is sent (and awaited) after every this many bad payloads.
GOOD_EVERY = 25


@contextmanager
def empty_store(store_at: StoreAt) -> Iterator[dict[str, Any]]:
    """``durable_queue`` arguments of a store with nothing in it (and emptied after)."""
    if store_at.kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield {"path": Path(folder) / "fuzz.db"}
        return
    try:
        yield store_at.options()
    finally:
        store_at.rows(f'DROP SCHEMA IF EXISTS "{store_at.schema}" CASCADE')


async def feed_malformed(
    store: dict[str, Any], payloads: list[bytes], good: itertools.count[int]
) -> None:
    handled: list[int] = []

    async def job(message: Job) -> None:
        handled.append(message.n)

    queue = durable_queue("jobs", **store, types=FUZZ_TYPES)
    sent: list[int] = []
    async with open_bus(
        Module("m").bind_request(Job, job), endpoints=[queue], routing=[route(Job).to("jobs")]
    ) as bus:
        for index, data in enumerate(payloads, 1):
            await queue.deliver_raw(data)
            if index % GOOD_EVERY == 0:
                sent.append(next(good))
                await bus.send(Job(sent[-1]))
                await bus.wait_quiet()
                assert handled[-1] == sent[-1]  # handled right there, between the bad ones
        await bus.wait_quiet()
        letters = await queue.dead_letters.list()
    assert sorted(handled) == sent  # every good message, exactly once

    assert len(letters) == len(payloads)
    undecodable = [data for data in payloads if not decodes(data)]
    by_reason = collections.Counter(letter.reason for letter in letters)
    assert by_reason[UNDECODABLE] == len(undecodable)
    assert by_reason[DeadLetterReason.NO_HANDLER] == len(payloads) - len(undecodable)
    assert collections.Counter(letter.raw for letter in letters if letter.raw is not None) == (
        collections.Counter(undecodable)
    )
    for letter in letters:
        assert letter.error
        if letter.reason is UNDECODABLE:
            reason = letter.error.split(":", 1)[0]
            assert reason in ENVELOPE_REASONS, letter.error
            assert letter.exception_type == f"triobus.{ENVELOPE_REASONS[reason].__name__}"
            event(reason)
        else:
            assert isinstance(letter.message, Stray)
            event("no_handler")


def decodes(data: bytes) -> bool:
    try:
        FUZZ_CODEC.decode(data)
    except EnvelopeError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize(
    ("store_at", "examples"), FUZZ_EXAMPLES.items(), indirect=["store_at"], ids=FUZZ_EXAMPLES
)
def test_malformed_envelopes_all_become_dead_letters_and_good_messages_pass(
    store_at: StoreAt, examples: int
) -> None:
    """10,000 malformed envelopes (100 examples of 100) through ``deliver_raw`` (SQLite)."""
    good_numbers = itertools.count(1)
    fed: list[int] = []

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain: slow
    )
    @given(st.lists(bad_payloads, min_size=BAD_PER_EXAMPLE, max_size=BAD_PER_EXAMPLE))
    def feed(payloads: list[bytes]) -> None:
        with empty_store(store_at) as store:
            trio.run(feed_malformed, store, payloads, good_numbers)
        fed.append(len(payloads))

    feed()
    assert sum(fed) >= examples * BAD_PER_EXAMPLE
    assert FUZZ_EXAMPLES["sqlite"] * BAD_PER_EXAMPLE == 10_000


async def test_the_ring_s_copy_of_a_durable_letter_points_to_the_durable_store(
    store_at: StoreAt,
) -> None:
    jobs = Breakable()
    queue, bus_runner = jobs_bus(store_at, jobs, retries=0)
    async with bus_runner as bus:
        await bus.send(Job(1))
        await quiet(bus, queue)
        [mirrored] = await bus.dead_letters.list(endpoint="jobs")
        with pytest.raises(ReplayError, match=r"replayed in its own store \(queue.dead_letters\)"):
            await bus.dead_letters.replay(mirrored.letter_id)
        [stored] = await queue.dead_letters.list()
        assert stored.message_id == mirrored.message_id
        jobs.broken = False
        assert await queue.dead_letters.replay(stored.letter_id) == 1
        await quiet(bus, queue)
        assert len(jobs.handled) == 1
