"""The dead-letter store API: list and count with filters, get, purge and replay.

The in-memory ring (``bus.dead_letters``) is a :class:`DeadLetterStore`.
Filters combine with AND; ages count on the ring's wall clock (injected
here, never slept on). A replay delivers the message again to the endpoint
and the handler that failed, with its ids and headers and a fresh attempt
budget; the letter leaves the store once the endpoint accepted it, and a
message that fails again is a new letter. A letter that cannot be replayed
stays, and the call says which and why.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from triobus import (
    ActorSystem,
    BusClosed,
    Command,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterNotFound,
    DeadLetterReason,
    DeadLetters,
    DeadLetterStore,
    Event,
    MailboxFull,
    MessageContext,
    Module,
    ReplayError,
    current_bus,
    current_context,
    local_queue,
    open_bus,
    route,
)
from triobus.mailbox import exception_type_name, resolve_selection

FAILED = DeadLetterReason.FAILED
CRASHED = DeadLetterReason.CRASHED
STOPPED = DeadLetterReason.STOPPED


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class PaymentError(Exception):
    pass


class CardDeclined(PaymentError):
    pass


def bus_context(name: str, message_id: str) -> dict[str, Any]:
    return {"message_name": name, "message_id": message_id, "correlation_id": message_id}


def sample_ring(clock: Clock) -> DeadLetters:
    """Five letters, ten seconds apart, of every kind a filter tells apart."""
    ring = DeadLetters(clock=clock)
    records: list[tuple[Any, ...]] = [
        ("a", "/app/bus/orders", FAILED, CardDeclined("no"), "orders", "pay", "m1"),
        ("b", "/app/bus/orders", FAILED, ValueError("bad"), "orders", "ship", "m2"),
        ("c", "/app/bus/billing", CRASHED, PaymentError("x"), "billing", "pay", "m3"),
        ("d", "/app/worker", STOPPED, None, None, None, None),
        ("e", "/app/bus/billing", FAILED, KeyError("k"), "billing", "ship", "m5"),
    ]
    for message, recipient, reason, error, endpoint, name, message_id in records:
        context = bus_context(name, message_id) if name else None
        ring.record(message, recipient, reason, error, context, endpoint=endpoint, log=False)
        clock.now += 10
    return ring


async def messages(
    ring: DeadLetters, filter: DeadLetterFilter | None = None, **criteria: Any
) -> str:
    return "".join(str(letter.message) for letter in await ring.list(filter, **criteria))


# ---------------------------------------------------------------- the protocol


async def test_the_in_memory_ring_and_a_bus_s_dead_letters_are_dead_letter_stores() -> None:
    assert isinstance(DeadLetters(), DeadLetterStore)
    async with open_bus(Module("m")) as bus:
        assert isinstance(bus.dead_letters, DeadLetterStore)
    assert not isinstance(object(), DeadLetterStore)


# ---------------------------------------------------------------- the record


def test_a_record_carries_what_a_durable_store_keeps_too() -> None:
    ring = DeadLetters(clock=Clock(42.0))
    try:
        raise CardDeclined("card 4242 declined")
    except CardDeclined as exc:
        error = exc
    context = {**bus_context("pay", "m1"), "attempts": 3, "handler": "pay_handler"}
    letter = ring.record("a", "/app/bus/orders", FAILED, error, context, endpoint="orders")
    assert letter.letter_id.startswith("dl-")
    assert letter.recorded_at == 42.0
    assert letter.exception is error
    assert letter.exception_type == f"{__name__}.CardDeclined"
    assert letter.error == "card 4242 declined"
    assert letter.traceback is not None
    assert letter.traceback.endswith("CardDeclined: card 4242 declined\n")
    assert (letter.message_name, letter.message_id, letter.attempts) == ("pay", "m1", 3)
    assert letter.endpoint == "orders"
    assert letter.raw is None


def test_a_plain_actor_s_letter_has_no_bus_fields_and_an_unraised_error_no_traceback() -> None:
    letter = DeadLetters().record("m", "/app/a", DeadLetterReason.MAILBOX_FULL, MailboxFull("full"))
    assert (letter.message_name, letter.message_id, letter.attempts, letter.endpoint) == (
        None,
        None,
        None,
        None,
    )
    assert letter.exception_type == "triobus.MailboxFull"
    assert letter.traceback is None  # made on the spot, never raised
    bare = DeadLetters().record("m", "/app/a", STOPPED)
    assert (bare.exception_type, bare.error, bare.traceback) == (None, None, None)


def test_every_letter_gets_its_own_id_and_equal_content_is_equal() -> None:
    ring = DeadLetters()
    first = ring.record("m", "/app/a", STOPPED)
    second = ring.record("m", "/app/a", STOPPED)
    assert first.letter_id != second.letter_id
    assert first == attrs.evolve(second, time=first.time)


def test_builtin_exceptions_are_named_bare_and_others_by_module() -> None:
    assert exception_type_name(ValueError) == "ValueError"
    assert exception_type_name(CardDeclined) == f"{__name__}.CardDeclined"
    assert exception_type_name(BusClosed) == "triobus.BusClosed"


# ---------------------------------------------------------------- list, count, get


async def test_list_gives_every_letter_oldest_first_and_limit_keeps_the_oldest() -> None:
    ring = sample_ring(Clock())
    assert await messages(ring) == "abcde"
    assert await messages(ring, limit=2) == "ab"
    assert await ring.list(limit=0) == []
    assert await ring.count() == 5
    with pytest.raises(ValueError, match=r"limit= takes a whole number >= 0"):
        await ring.list(limit=-1)


async def test_a_message_name_filter_matches_the_bus_name_exactly() -> None:
    ring = sample_ring(Clock())
    assert await messages(ring, message_name="pay") == "ac"
    assert await ring.count(message_name="ship") == 2
    assert await messages(ring, message_name="pa") == ""


async def test_an_exception_class_matches_its_subclasses_and_a_name_matches_exactly() -> None:
    ring = sample_ring(Clock())
    assert await messages(ring, exception_type=PaymentError) == "ac"
    assert await messages(ring, exception_type=CardDeclined) == "a"
    assert await messages(ring, exception_type=LookupError) == "e"
    assert await messages(ring, exception_type=f"{__name__}.PaymentError") == "c"
    assert await messages(ring, exception_type="ValueError") == "b"


def test_an_exception_class_matches_a_letter_without_its_live_exception_by_exact_name() -> None:
    stored = DeadLetter(
        "a", "/app/bus/orders", FAILED, exception_type=f"{__name__}.CardDeclined", error="no"
    )
    assert DeadLetterFilter(exception_type=CardDeclined).matches(stored, 0.0)
    assert not DeadLetterFilter(exception_type=PaymentError).matches(stored, 0.0)


async def test_a_reason_filter_takes_the_reason_or_its_value() -> None:
    ring = sample_ring(Clock())
    assert await messages(ring, reason=FAILED) == "abe"
    assert await messages(ring, reason="stopped") == "d"
    with pytest.raises(ValueError, match=r"reason= takes a DeadLetterReason or one of .*'failed'"):
        await ring.list(reason="broken")


async def test_recipient_and_endpoint_filters_match_exactly() -> None:
    ring = sample_ring(Clock())
    assert await messages(ring, recipient="/app/worker") == "d"
    assert await messages(ring, recipient="/app/bus/billing") == "ce"
    assert await messages(ring, endpoint="orders") == "ab"
    assert await messages(ring, endpoint="order") == ""


async def test_ages_count_on_the_wall_clock_and_split_the_letters_in_two() -> None:
    clock = Clock()
    ring = sample_ring(clock)  # recorded at 0, 10, 20, 30, 40 s; now is 50 s
    assert await messages(ring, older_than=25) == "abc"  # ages 50, 40, 30, 20, 10 s
    assert await messages(ring, newer_than=25) == "de"
    assert await messages(ring, older_than=30) == "ab"  # 30 s old is not older than 30 s
    assert await messages(ring, newer_than=30) == "cde"
    assert await messages(ring, older_than=15, newer_than=35) == "cd"
    clock.now += 100
    assert await messages(ring, newer_than=25) == ""
    assert await messages(ring, older_than=100) == "abcde"


async def test_filters_combine_with_and() -> None:
    ring = sample_ring(Clock())
    assert await messages(ring, reason=FAILED, endpoint="billing") == "e"
    assert await messages(ring, reason=FAILED, exception_type=Exception, older_than=25) == "ab"
    assert await messages(ring, message_name="pay", endpoint="billing", reason="crashed") == "c"
    assert await messages(ring, message_name="pay", reason=STOPPED) == ""
    assert await ring.count(message_name="ship", newer_than=15) == 1


async def test_a_filter_object_and_keyword_filters_mean_the_same_but_never_together() -> None:
    ring = sample_ring(Clock())
    chosen = DeadLetterFilter(reason=FAILED, endpoint="orders")
    assert await messages(ring, chosen) == await messages(ring, reason=FAILED, endpoint="orders")
    assert await ring.count(chosen) == 2
    with pytest.raises(TypeError, match=r"not both"):
        await ring.list(chosen, reason=FAILED)
    with pytest.raises(TypeError, match=r"unknown dead-letter filter\(s\) colour"):
        await ring.count(colour="red")  # type: ignore[call-arg]


def test_bad_filter_values_are_named() -> None:
    with pytest.raises(TypeError, match=r"exception_type= takes an exception class"):
        DeadLetterFilter(exception_type=int)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"message_name= takes a non-empty str"):
        DeadLetterFilter(message_name="")
    with pytest.raises(ValueError, match=r"older_than= and newer_than= take a finite number"):
        DeadLetterFilter(older_than=-1)


async def test_get_finds_a_letter_by_id_and_an_unknown_id_is_a_lookup_error() -> None:
    ring = sample_ring(Clock())
    letters = await ring.list()
    assert await ring.get(letters[2].letter_id) is letters[2]
    with pytest.raises(DeadLetterNotFound, match=r"no dead letter 'dl-nope' in this store") as info:
        await ring.get("dl-nope")
    assert isinstance(info.value, LookupError)
    assert info.value.letter_id == "dl-nope"


async def test_an_evicted_letter_is_gone_from_the_store() -> None:
    ring = DeadLetters(capacity=2)
    first = ring.record("a", "/app/a", STOPPED)
    ring.record("b", "/app/a", STOPPED)
    ring.record("c", "/app/a", STOPPED)
    with pytest.raises(DeadLetterNotFound, match=r"evicted"):
        await ring.get(first.letter_id)
    assert await ring.count() == 2


# ---------------------------------------------------------------- purge


async def test_purge_removes_one_id_several_ids_or_a_filter_s_letters_and_counts_them() -> None:
    ring = sample_ring(Clock())
    ids = {str(letter.message): letter.letter_id for letter in await ring.list()}
    assert await ring.purge(ids["a"]) == 1
    assert await messages(ring) == "bcde"
    assert await ring.purge([ids["e"], ids["b"], ids["e"]]) == 2
    assert await messages(ring) == "cd"
    assert await ring.purge(reason=CRASHED) == 1
    assert await ring.purge(DeadLetterFilter(reason=FAILED)) == 0
    assert await messages(ring) == "d"
    assert await ring.purge(DeadLetterFilter()) == 1  # every letter
    assert await ring.count() == 0
    assert (ring.total, ring.evicted) == (5, 0)


async def test_purge_needs_a_selection_and_removes_nothing_when_an_id_is_unknown() -> None:
    ring = sample_ring(Clock())
    first = (await ring.list())[0]
    with pytest.raises(TypeError, match=r"purge\(\) needs a selection"):
        await ring.purge()
    with pytest.raises(DeadLetterNotFound, match=r"'dl-nope'.* so none was purged"):
        await ring.purge([first.letter_id, "dl-nope"])
    with pytest.raises(TypeError, match=r"letter ids or keyword filters, not both"):
        await ring.purge(first.letter_id, reason=FAILED)
    assert await ring.count() == 5


def test_a_selection_is_ids_once_each_or_a_filter() -> None:
    assert resolve_selection("x", {}, "purge") == ("x",)
    assert resolve_selection(["x", "y", "x"], {}, "purge") == ("x", "y")
    assert resolve_selection(None, {"endpoint": "o"}, "purge") == DeadLetterFilter(endpoint="o")
    with pytest.raises(TypeError, match=r"a letter id is a str, got 3"):
        resolve_selection(["x", 3], {}, "replay")  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"got int"):
        resolve_selection(3, {}, "replay")  # type: ignore[arg-type]


# ---------------------------------------------------------------- replay on the bus


@attrs.frozen
class Job(Command):
    n: int


@attrs.frozen
class Kick(Command):
    n: int


@attrs.frozen
class Paid(Event):
    n: int


class Flaky:
    """A handler that fails its first ``failures`` calls, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.handled: list[MessageContext] = []

    async def __call__(self, job: Job) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise PaymentError(f"call {self.calls} failed")
        self.handled.append(current_context())


async def test_a_replayed_command_keeps_its_id_and_a_failure_again_is_a_new_letter() -> None:
    flaky = Flaky(failures=2)
    async with open_bus(
        Module("m").bind_request(Job, flaky),
        endpoints=[local_queue("jobs", retries=0)],
        routing=[route(Job).to("jobs")],
    ) as bus:
        await bus.send(Job(1), headers={"tenant": "acme"}, correlation_id="chain")
        await bus.wait_quiet()
        [first] = await bus.dead_letters.list()
        assert (first.reason, first.endpoint, first.attempts) == (FAILED, "jobs", 1)

        assert await bus.dead_letters.replay(first.letter_id) == 1
        await bus.wait_quiet()
        [second] = await bus.dead_letters.list()  # failed again: a new letter
        assert second.letter_id != first.letter_id
        assert second.message_id == first.message_id
        assert second.context == first.context  # same ids, headers; a fresh attempt budget
        assert second.error == "call 2 failed"

        assert await bus.dead_letters.replay(second.letter_id) == 1
        await bus.wait_quiet()
        assert await bus.dead_letters.count() == 0
        [handled] = flaky.handled
        assert handled.message_id == first.message_id
        assert (handled.correlation_id, handled.headers) == ("chain", {"tenant": "acme"})
        assert flaky.calls == 3
        assert bus.in_flight == 0


async def test_a_replay_has_a_fresh_attempt_budget() -> None:
    flaky = Flaky(failures=3)
    async with open_bus(
        Module("m").bind_request(Job, flaky),
        endpoints=[local_queue("jobs", retries=1)],
        routing=[route(Job).to("jobs")],
    ) as bus:
        await bus.send(Job(1))
        await bus.wait_quiet()
        [letter] = await bus.dead_letters.list()
        assert letter.attempts == 2
        await bus.dead_letters.replay(letter.letter_id)
        await bus.wait_quiet()
        # Call 3 failed, and its retry (call 4) succeeded: two more attempts.
        assert flaky.calls == 4
        assert len(flaky.handled) == 1
        assert await bus.dead_letters.count() == 0


async def test_a_replayed_message_keeps_the_causation_of_the_handler_that_sent_it() -> None:
    flaky = Flaky(failures=1)

    async def kick(command: Kick) -> None:
        await current_bus().send(Job(command.n))

    async with open_bus(
        Module("m").bind_request(Kick, kick).bind_request(Job, flaky),
        endpoints=[local_queue("jobs", retries=0)],
        routing=[route(Job).to("jobs")],
    ) as bus:
        await bus.send(Kick(1), headers={"tenant": "acme"})
        await bus.wait_quiet()
        [letter] = await bus.dead_letters.list(endpoint="jobs")
        assert letter.context is not None
        kick_id = letter.context["causation_id"]
        assert kick_id is not None
        await bus.dead_letters.replay(letter.letter_id)
        await bus.wait_quiet()
        [handled] = flaky.handled
        assert (handled.message_id, handled.causation_id) == (letter.message_id, kick_id)
        assert handled.headers == {"tenant": "acme"}


async def test_replaying_one_failed_subscriber_runs_that_subscriber_alone() -> None:
    calls: list[str] = []

    async def books(event: Paid) -> None:
        calls.append("books")

    fixed = False

    async def mails(event: Paid) -> None:
        calls.append("mails")
        if not fixed:
            raise PaymentError("mail server down")

    async with open_bus(
        Module("m").bind_event(Paid, [books, mails]),
        endpoints=[local_queue("events", retries=0)],
        routing=[route(Paid).to("events")],
    ) as bus:
        await bus.publish(Paid(1))
        await bus.wait_quiet()
        assert calls == ["books", "mails"]
        [letter] = await bus.dead_letters.list()
        assert letter.context is not None and "mails" in letter.context["handler"]
        fixed = True
        assert await bus.dead_letters.replay(letter.letter_id) == 1
        await bus.wait_quiet()
        assert calls == ["books", "mails", "mails"]
        assert await bus.dead_letters.count() == 0


async def test_a_letter_of_a_closed_bus_is_not_replayed_and_stays() -> None:
    async with ActorSystem("app") as system:
        async with open_bus(
            Module("m").bind_request(Job, Flaky(failures=1)),
            system=system,
            endpoints=[local_queue("jobs", retries=0)],
            routing=[route(Job).to("jobs")],
        ) as bus:
            await bus.send(Job(1))
            await bus.wait_quiet()
        [letter] = await system.dead_letters.list()
        with pytest.raises(ReplayError, match=r"is not running") as info:
            await system.dead_letters.replay(letter.letter_id)
        assert letter.letter_id in str(info.value)
        assert "It stays in the store" in str(info.value)
        assert info.value.letter_ids == (letter.letter_id,)
        assert info.value.replayed == 0
        assert isinstance(info.value.__cause__, BusClosed)
        assert await system.dead_letters.get(letter.letter_id) is letter


async def test_a_plain_actor_s_letter_is_not_replayable_and_nothing_of_the_selection_is() -> None:
    flaky = Flaky(failures=1)
    async with open_bus(
        Module("m").bind_request(Job, flaky),
        endpoints=[local_queue("jobs", retries=0)],
        routing=[route(Job).to("jobs")],
    ) as bus:
        await bus.send(Job(1))
        await bus.wait_quiet()
        plain = bus.dead_letters.record("hello", "/app/worker", STOPPED)
        with pytest.raises(ReplayError, match=r"1 of the 2 selected .* cannot be replayed") as info:
            await bus.dead_letters.replay(DeadLetterFilter())
        assert plain.letter_id in str(info.value)
        assert "a plain actor's message" in str(info.value)
        assert info.value.letter_ids == (plain.letter_id,)
        assert await bus.dead_letters.count() == 2  # the bus letter was not replayed either
        assert flaky.calls == 1
        assert await bus.dead_letters.replay(reason=FAILED) == 1
        await bus.wait_quiet()
        assert await bus.dead_letters.list() == [plain]


async def test_replay_of_an_unknown_id_replays_nothing() -> None:
    flaky = Flaky(failures=1)
    async with open_bus(
        Module("m").bind_request(Job, flaky),
        endpoints=[local_queue("jobs", retries=0)],
        routing=[route(Job).to("jobs")],
    ) as bus:
        await bus.send(Job(1))
        await bus.wait_quiet()
        [letter] = await bus.dead_letters.list()
        with pytest.raises(DeadLetterNotFound, match=r"so none was replayed"):
            await bus.dead_letters.replay([letter.letter_id, "dl-nope"])
        with pytest.raises(TypeError, match=r"replay\(\) needs a selection"):
            await bus.dead_letters.replay()
        assert flaky.calls == 1
        assert await bus.dead_letters.count() == 1


async def test_a_replayed_letter_leaves_the_store_only_once_the_endpoint_accepted_it() -> None:
    release = trio.Event()
    done: list[int] = []

    async def job(command: Job) -> None:
        if command.n == 0:
            raise PaymentError("first try")
        if command.n == 1:
            await release.wait()
        done.append(command.n)

    async with open_bus(
        Module("m").bind_request(Job, job),
        endpoints=[local_queue("jobs", retries=0, capacity=1)],
        routing=[route(Job).to("jobs")],
    ) as bus:
        await bus.send(Job(0))
        await bus.wait_quiet()
        [letter] = await bus.dead_letters.list()
        await bus.send(Job(1))  # in hand, waiting
        await bus.send(Job(2))  # fills the mailbox
        replayed: list[int] = []
        async with trio.open_nursery() as nursery:

            async def replay() -> None:
                replayed.append(await bus.dead_letters.replay(letter.letter_id))

            nursery.start_soon(replay)
            await trio.testing.wait_all_tasks_blocked()
            assert replayed == []  # waiting for room, as send does
            assert await bus.dead_letters.get(letter.letter_id) is letter
            with pytest.raises(ReplayError, match=r"its replay is under way already"):
                await bus.dead_letters.replay(letter.letter_id)
            release.set()
        assert replayed == [1]
        await bus.wait_quiet()
        assert done == [1, 2]
        [again] = await bus.dead_letters.list()  # Job(0) failed again: a new letter
        assert (again.letter_id != letter.letter_id, again.message_id) == (True, letter.message_id)


async def test_a_letter_the_endpoint_refuses_stays_with_the_refusal_as_cause() -> None:
    release = trio.Event()

    async def job(command: Job) -> None:
        if command.n == 0:
            raise PaymentError("first try")
        await release.wait()

    async with open_bus(
        Module("m").bind_request(Job, job),
        endpoints=[local_queue("jobs", retries=0, capacity=1, overflow="fail")],
        routing=[route(Job).to("jobs")],
    ) as bus:
        await bus.send(Job(0))
        await bus.wait_quiet()
        [letter] = await bus.dead_letters.list()
        await bus.send(Job(1))
        await trio.testing.wait_all_tasks_blocked()
        await bus.send(Job(2))
        with pytest.raises(ReplayError, match=r"was not replayed: MailboxFull") as info:
            await bus.dead_letters.replay(letter.letter_id)
        assert isinstance(info.value.__cause__, MailboxFull)
        assert await bus.dead_letters.get(letter.letter_id) is letter
        release.set()


async def test_a_message_the_endpoint_dropped_is_replayed_to_that_endpoint() -> None:
    release = trio.Event()
    done: list[int] = []

    async def job(command: Job) -> None:
        if command.n == 1:
            await release.wait()
        done.append(command.n)

    async with open_bus(
        Module("m").bind_request(Job, job),
        endpoints=[local_queue("jobs", capacity=1, overflow="drop_newest")],
        routing=[route(Job).to("jobs")],
    ) as bus:
        await bus.send(Job(1))
        await trio.testing.wait_all_tasks_blocked()
        await bus.send(Job(2))
        await bus.send(Job(3), headers={"tenant": "acme"})  # dropped: the mailbox is full
        [letter] = await bus.dead_letters.list()
        assert (letter.reason, letter.endpoint) == (DeadLetterReason.MAILBOX_FULL, "jobs")
        release.set()
        await bus.wait_quiet()
        assert await bus.dead_letters.replay(endpoint="jobs") == 1
        await bus.wait_quiet()
        assert done == [1, 2, 3]
        assert await bus.dead_letters.count() == 0


async def test_a_letter_recorded_under_fault_injection_replays_after_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from random import Random

    from triobus.testing import FaultInjector, tracked

    flaky = Flaky(failures=1)
    async with open_bus(
        Module("m").bind_request(Job, flaky),
        endpoints=[local_queue("jobs", retries=0)],
        routing=[route(Job).to("jobs")],
    ) as bus:

        class Always(Random):
            def random(self) -> float:
                return 0.0  # the coin always says "fault"

        async with tracked(bus, faults=FaultInjector(Always(0)).delay(Job)) as session:
            await bus.send(Job(1))
        [letter] = await bus.dead_letters.list()
        assert [record.message_id for record in session.dead_letters] == [letter.message_id]
        assert [record.message_id for record in session.faults_injected()] == [letter.message_id]
        # The session and its injector are gone: the replay goes to the endpoint itself.
        await bus.dead_letters.replay(letter.letter_id)
        await bus.wait_quiet()
        assert [context.message_id for context in flaky.handled] == [letter.message_id]
        assert bus.in_flight == 0
