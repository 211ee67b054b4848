"""triobus.testing.FaultInjector: drop, duplicate, delay, reorder, crash; shrinking and replay."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import Phase, given, seed, settings
from hypothesis import strategies as st

from triobus import (
    ActorSystem,
    Backoff,
    BusRunner,
    Command,
    DeadLetterReason,
    Event,
    Module,
    Request,
    current_bus,
    local_queue,
    route,
    testing,
)
from triobus.testing import (
    Fault,
    FaultInjector,
    FaultRule,
    InjectedFault,
    Record,
    RecordKind,
    TrackedSession,
    tracked,
)

MockClock = trio.testing.MockClock


# ---------------------------------------------------------------- messages and handlers


@attrs.frozen
class Charge(Command):
    order_id: str


@attrs.frozen
class Note(Command):
    text: str


@attrs.frozen
class Charged(Event):
    order_id: str


@attrs.frozen
class Refunded(Charged):
    """A subclass: rules about Charged match it too."""


@attrs.frozen
class Quote(Request[int]):
    order_id: str


class Ledger:
    """What the handlers did, in order."""

    def __init__(self) -> None:
        self.charges: list[str] = []
        self.charge_ids: list[str] = []
        self.notes: list[str] = []
        self.events: list[Charged] = []
        self.times: dict[str, float] = {}

    async def charge(self, command: Charge) -> None:
        self.charges.append(command.order_id)
        self.times[command.order_id] = trio.current_time()
        await current_bus().publish(Charged(command.order_id))

    async def note(self, command: Note) -> None:
        self.notes.append(command.text)

    async def charged(self, event: Charged) -> None:
        self.events.append(event)

    async def quote(self, query: Quote) -> int:
        return len(query.order_id)

    def module(self) -> Module:
        return (
            Module("ledger")
            .bind_request(Charge, self.charge)
            .bind_request(Note, self.note)
            .bind_request(Quote, self.quote)
            .bind_event(Charged, [self.charged])
            .bind_event(Refunded, [self.charged])
        )


def open_ledger(ledger: Ledger, **options: Any) -> BusRunner:
    options.setdefault("endpoints", [local_queue("notes"), local_queue("events")])
    options.setdefault(
        "routing",
        [route(Note).to("notes"), route(Charged).to("events"), route(Refunded).to("events")],
    )
    return testing.open_test_bus(ledger.module(), **options)


class Coin(random.Random):
    """A fault coin that always says yes; a delay is ``fraction`` of ``max_delay``."""

    def __init__(self, fraction: float = 0.25) -> None:
        super().__init__(0)
        assert fraction < 0.5  # the injector applies a fault when random() < 0.5
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


def always() -> FaultInjector:
    return FaultInjector(Coin())


def fault_kinds(session: TrackedSession) -> list[tuple[str, object]]:
    return [(str(r.kind), r.message) for r in session.faults_injected()]


# ---------------------------------------------------------------- each fault


async def test_drop_loses_the_delivery_and_records_it(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    async with open_ledger(ledger) as bus, tracked(bus, faults=always().drop(Note)) as session:
        await bus.send(Note("lost"))
        await bus.send(Charge("o-1"))
        await session.wait_quiet()
        assert bus.in_flight == 0
    assert ledger.notes == []
    assert ledger.charges == ["o-1"]
    [dropped] = session.faults_injected()
    assert dropped.kind is RecordKind.DROPPED
    assert dropped.message == Note("lost")
    assert dropped.endpoint == "notes"
    assert dropped.message_id == session.sent(Note)[0].message_id
    assert session.handled(Note) == []
    assert session.dead_letters == []  # a lost delivery leaves no trace but the record


async def test_duplicate_delivers_the_same_message_twice(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    async with (
        open_ledger(ledger) as bus,
        tracked(bus, faults=always().duplicate(Charge)) as session,
    ):
        await bus.send(Charge("o-1"))
        await session.wait_quiet()
    assert ledger.charges == ["o-1", "o-1"]
    [duplicated] = session.faults_injected()
    assert duplicated.kind is RecordKind.DUPLICATED
    assert duplicated.endpoint == "default"
    handled = session.handled(Charge)
    assert len(handled) == 2
    assert {r.message_id for r in handled} == {duplicated.message_id}  # same id: a redelivery
    assert all(r.attempt == 1 for r in handled)
    # Each delivery's handler published its own event.
    assert len(session.handled(Charged)) == 2


async def test_delay_delivers_later_and_lets_later_messages_overtake(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    faults = FaultInjector(Coin(0.25), max_delay=4.0).delay(Charge, max_times=1)
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        start = trio.current_time()
        await bus.send(Charge("late"))
        await bus.send(Charge("early"))
        await session.wait_quiet()
    [delayed] = session.faults_injected()
    assert delayed.kind is RecordKind.DELAYED
    assert delayed.message == Charge("late")
    assert delayed.detail == {"seconds": 1.0}
    assert ledger.charges == ["early", "late"]
    assert ledger.times == {"early": start, "late": start + 1.0}


async def test_reorder_lets_the_next_delivery_overtake(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    faults = always().reorder(Note, max_times=1)
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        start = trio.current_time()
        await bus.send(Note("first"))
        await bus.send(Note("second"))
        await session.wait_quiet()
        assert trio.current_time() == start  # overtaken at once, not after the window
    assert ledger.notes == ["second", "first"]
    [reordered] = session.faults_injected()
    assert reordered.kind is RecordKind.REORDERED
    assert reordered.message == Note("first")
    assert reordered.endpoint == "notes"


async def test_crash_handler_fails_an_attempt_which_is_then_retried(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    faults = always().crash_handler(Note, max_times=1)
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        await bus.send(Note("n"))
        await session.wait_quiet()
    assert ledger.notes == ["n"]  # the handler itself ran once, on the retry
    [crashed] = session.faults_injected()
    assert crashed.kind is RecordKind.CRASHED
    assert crashed.detail == {"target": "handler"}
    assert crashed.handler == "Ledger.note"
    assert crashed.attempt == 1
    assert crashed.endpoint is not None and crashed.endpoint.endswith("/notes")
    [failed] = session.failed(Note)
    assert isinstance(failed.exception, InjectedFault)
    assert [r.attempt for r in session.retried(Note)] == [2]
    assert [r.attempt for r in session.handled(Note)] == [2]


async def test_crash_handler_every_time_ends_in_dead_letters(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    async with (
        open_ledger(ledger) as bus,
        tracked(bus, faults=always().crash_handler(Note)) as session,
    ):
        await bus.send(Note("n"))
        await session.wait_quiet()
    assert ledger.notes == []
    assert [r.attempt for r in session.faults_injected()] == [1, 2, 3]
    [letter] = session.dead_letters
    assert isinstance(letter.exception, InjectedFault)
    assert letter.detail["reason"] == DeadLetterReason.FAILED
    assert letter.attempt == 3


async def test_crash_handler_on_an_invoke_fails_the_caller(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    async with (
        open_ledger(ledger) as bus,
        tracked(bus, faults=always().crash_handler(Quote, max_times=1)) as session,
    ):
        with pytest.raises(InjectedFault):
            await bus.invoke(Quote("o-1"))
        assert await bus.invoke(Quote("o-1")) == 3
    assert [str(r.kind) for r in session.faults_injected()] == ["crashed"]
    assert session.failed(Quote)[0].attempt == 1


async def test_crash_actor_restarts_the_endpoint_and_dead_letters_the_message(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    async with (
        ActorSystem("sys", max_restarts=10) as system,
        open_ledger(ledger, system=system) as bus,
        tracked(bus, faults=always().crash_actor(Note, max_times=1)) as session,
    ):
        await bus.send(Note("crashes"))
        await bus.send(Note("after"))
        await session.wait_quiet()
        assert system.tree().find("notes").restarts == 1
        assert system.tree().find("default").restarts == 0
    assert ledger.notes == ["after"]  # the endpoint works again after its restart
    [crashed] = session.faults_injected()
    assert crashed.kind is RecordKind.CRASHED
    assert crashed.detail == {"target": "actor"}
    assert crashed.message == Note("crashes")
    assert crashed.endpoint is not None and crashed.endpoint.endswith("/notes")
    [letter] = session.dead_letters  # never lost silently
    assert letter.message == Note("crashes")
    assert letter.message_id == crashed.message_id
    assert letter.detail["reason"] == DeadLetterReason.CRASHED
    assert isinstance(letter.exception, InjectedFault)


async def test_crash_actor_on_an_invoke_fails_the_caller(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    async with (
        open_ledger(ledger) as bus,
        tracked(bus, faults=always().crash_actor(Quote, max_times=1)) as session,
    ):
        with pytest.raises(InjectedFault):
            await bus.invoke(Quote("o-1"))
        assert await bus.invoke(Quote("o-1")) == 3
    assert [str(r.kind) for r in session.faults_injected()] == ["crashed"]


async def test_faults_apply_to_messages_that_handlers_send(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    async with (
        open_ledger(ledger) as bus,
        tracked(bus, faults=always().drop(Charged)) as session,
    ):
        await bus.send(Charge("o-1"))
        await session.wait_quiet()
    assert ledger.charges == ["o-1"]
    assert ledger.events == []  # published by the handler, then lost on its way
    [dropped] = session.faults_injected()
    assert dropped.message == Charged("o-1")
    assert dropped.causation_id == session.sent(Charge)[0].message_id


# ---------------------------------------------------------------- which deliveries a rule hits


async def test_a_rule_for_a_message_type_leaves_other_types_alone(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    async with open_ledger(ledger) as bus, tracked(bus, faults=always().drop(Note)) as session:
        await bus.send(Charge("o-1"))
        await bus.send(Note("n"))
        await session.wait_quiet()
    assert ledger.charges == ["o-1"]
    assert ledger.events == [Charged("o-1")]
    assert fault_kinds(session) == [("dropped", Note("n"))]


async def test_a_rule_for_a_class_matches_its_subclasses(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    async with (
        open_ledger(ledger) as bus,
        tracked(bus, faults=always().drop(Charged)) as session,
    ):
        await bus.publish(Refunded("o-1"))
        await bus.send(Note("n"))
        await session.wait_quiet()
    assert ledger.events == []
    assert ledger.notes == ["n"]
    assert fault_kinds(session) == [("dropped", Refunded("o-1"))]


async def test_a_rule_for_a_message_name_matches_that_name_only(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    faults = always().drop(f"{__name__}.Refunded")
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        await bus.publish(Refunded("o-1"))
        await bus.publish(Charged("o-2"))
        await session.wait_quiet()
    assert ledger.events == [Charged("o-2")]
    assert fault_kinds(session) == [("dropped", Refunded("o-1"))]


async def test_a_rule_for_an_endpoint_matches_deliveries_to_it_only(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    faults = always().duplicate(endpoint="events")
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        await bus.send(Note("n"))
        await bus.send(Charge("o-1"))
        await session.wait_quiet()
    assert ledger.notes == ["n"]
    assert ledger.charges == ["o-1"]
    assert ledger.events == [Charged("o-1"), Charged("o-1")]
    assert [(str(r.kind), r.endpoint) for r in session.faults_injected()] == [
        ("duplicated", "events")
    ]


async def test_crash_rules_for_an_endpoint_match_its_actor_only(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    faults = always().crash_handler(endpoint="notes").crash_actor(endpoint="events", max_times=1)
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        await bus.send(Charge("o-1"))  # default endpoint: untouched
        await bus.send(Note("n"))  # every attempt crashes
        await session.wait_quiet()
    assert ledger.charges == ["o-1"]
    assert ledger.notes == []
    assert ledger.events == []  # the actor of "events" crashed on it
    crashes = [(r.detail["target"], r.endpoint) for r in session.faults_injected()]
    assert crashes.count(("handler", "/triobus/bus/notes")) == 3
    assert crashes.count(("actor", "/triobus/bus/events")) == 1
    assert len(crashes) == 4


async def test_a_rule_for_a_type_and_an_endpoint_needs_both(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    faults = always().drop(Charged, endpoint="notes").drop(Note, endpoint="notes")
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        await bus.send(Charge("o-1"))
        await bus.send(Note("n"))
        await session.wait_quiet()
    assert ledger.events == [Charged("o-1")]  # Charged goes to "events", not "notes"
    assert fault_kinds(session) == [("dropped", Note("n"))]


async def test_crash_rules_match_an_endpoint_whose_uri_has_a_slash(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    faults = always().crash_handler(endpoint="orders/high", max_times=1)
    async with (
        open_ledger(
            ledger, endpoints=[local_queue("orders/high")], routing=[route(Note).to("orders/high")]
        ) as bus,
        tracked(bus, faults=faults) as session,
    ):
        await bus.send(Note("n"))
        await session.wait_quiet()
    assert [str(r.kind) for r in session.faults_injected()] == ["crashed"]


async def test_delivery_rules_match_an_endpoint_whose_uri_has_a_slash(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    async with (
        open_ledger(
            ledger, endpoints=[local_queue("orders/high")], routing=[route(Note).to("orders/high")]
        ) as bus,
        tracked(bus, faults=always().drop(endpoint="orders/high")) as session,
    ):
        await bus.send(Note("n"))
        await session.wait_quiet()
    assert [str(r.kind) for r in session.faults_injected()] == ["dropped"]
    assert ledger.notes == []


# ---------------------------------------------------------------- how many, and which rule


async def test_max_times_bounds_how_often_a_rule_applies(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    faults = always().duplicate(Note, max_times=2)
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        for n in range(5):
            await bus.send(Note(str(n)))
        await session.wait_quiet()
    assert fault_kinds(session) == [("duplicated", Note("0")), ("duplicated", Note("1"))]
    assert ledger.notes == ["0", "0", "1", "1", "2", "3", "4"]


async def test_without_max_times_a_rule_applies_every_time(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    async with (
        open_ledger(ledger) as bus,
        tracked(bus, faults=always().duplicate(Note)) as session,
    ):
        for n in range(5):
            await bus.send(Note(str(n)))
        await session.wait_quiet()
    assert len(session.faults_injected()) == 5
    assert len(ledger.notes) == 10


async def test_a_delivery_suffers_at_most_one_fault(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    faults = always().duplicate(Note, max_times=1).drop(Note)
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        for text in "abc":
            await bus.send(Note(text))
        await session.wait_quiet()
    injected = session.faults_injected()
    # Both rules match every note and the coin always says yes: one fault each.
    assert sorted(r.message.text for r in injected) == ["a", "b", "c"]  # type: ignore[attr-defined]
    assert [str(r.kind) for r in injected].count("duplicated") == 1  # max_times
    [duplicated] = [r.message for r in injected if r.kind is RecordKind.DUPLICATED]
    assert ledger.notes == [duplicated.text, duplicated.text]  # type: ignore[attr-defined]


async def test_each_rule_has_its_own_max_times_budget(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    faults = always().duplicate(Note, max_times=1).duplicate(Note, max_times=1)
    async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
        for n in range(4):
            await bus.send(Note(str(n)))
        await session.wait_quiet()
    assert len(session.faults_injected()) == 2


async def test_no_rules_no_faults(autojump_clock: MockClock) -> None:
    ledger = Ledger()
    async with open_ledger(ledger) as bus, tracked(bus, faults=always()) as session:
        await bus.send(Charge("o-1"))
        await bus.send(Note("n"))
        assert await bus.invoke(Quote("o-1")) == 3
        await session.wait_quiet()
    assert session.faults_injected() == []
    assert ledger.charges == ["o-1"]
    assert ledger.events == [Charged("o-1")]


async def test_a_seeded_coin_makes_the_same_decisions_every_run(
    autojump_clock: MockClock,
) -> None:
    async def one_run() -> tuple[list[tuple[str, object]], list[str]]:
        ledger = Ledger()
        faults = FaultInjector(random.Random(7)).drop(Note).duplicate(Note)
        async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
            for n in range(12):
                await bus.send(Note(str(n)))
            await session.wait_quiet()
        return fault_kinds(session), ledger.notes

    first = await one_run()
    assert first == await one_run()
    kinds = {kind for kind, _ in first[0]}
    assert kinds == {"dropped", "duplicated"}  # a coin: both rules fired on some notes


def test_the_rules_are_kept_in_the_order_they_were_added() -> None:
    faults = always().drop(Note).crash_actor(endpoint="notes", max_times=3)
    assert faults.rules == [
        FaultRule(Fault.DROP, Note),
        FaultRule(Fault.CRASH_ACTOR, None, "notes", 3),
    ]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_times"):
        always().drop(max_times=0)
    with pytest.raises(TypeError, match=r"st\.data\(\)"):
        FaultInjector(42)
    with pytest.raises(ValueError, match="max_delay"):
        FaultInjector(Coin(), max_delay=0)
    with pytest.raises(ValueError, match="reorder_window"):
        FaultInjector(Coin(), reorder_window=-1.0)


# ---------------------------------------------------------------- driven by hypothesis


class DoubleCharge(AssertionError):
    pass


def charge_once_each(
    count: int, data: st.DataObject, faults: FaultInjector, sessions: list[TrackedSession]
) -> None:
    """Charge ``count`` orders under ``faults``; fail if any order was charged twice."""
    ledger = Ledger()

    async def scenario() -> None:
        async with open_ledger(ledger) as bus, tracked(bus, faults=faults) as session:
            for n in range(count):
                await bus.send(Charge(f"o-{n}"))
            await session.wait_quiet()
        sessions.append(session)

    testing.run(scenario)
    twice = sorted(order for order, n in Counter(ledger.charges).items() if n > 1)
    if twice:
        raise DoubleCharge(f"charged more than once: {twice}")


FINDS_A_BUG = settings(
    max_examples=50,
    deadline=None,
    database=None,
    print_blob=False,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


def test_a_duplicate_only_failure_shrinks_to_exactly_one_duplicate() -> None:
    sessions: list[TrackedSession] = []

    @seed(20260101)
    @FINDS_A_BUG
    @given(count=st.integers(1, 6), data=st.data())
    def prop(count: int, data: st.DataObject) -> None:
        charge_once_each(count, data, FaultInjector(data).duplicate(Charge), sessions)

    with pytest.raises(DoubleCharge, match=r"\['o-0'\]"):
        prop()
    final = sessions[-1]  # hypothesis replays the shrunk example last
    assert [(r.kind, r.message) for r in final.faults_injected()] == [
        (RecordKind.DUPLICATED, Charge("o-0"))
    ]
    assert [r.message for r in final.sent()] == [Charge("o-0")]


def property_with_every_delivery_fault(sessions: list[TrackedSession]) -> None:
    """Only a duplicate breaks it; drops, delays and reorders are harmless."""

    @seed(424242)
    @FINDS_A_BUG
    @given(count=st.integers(1, 5), data=st.data())
    def prop(count: int, data: st.DataObject) -> None:
        faults = FaultInjector(data).drop(Charged).delay().reorder().duplicate()
        charge_once_each(count, data, faults, sessions)

    prop()


def test_several_fault_kinds_still_find_the_duplicate() -> None:
    sessions: list[TrackedSession] = []
    with pytest.raises(DoubleCharge, match=r"\['o-0'\]"):
        property_with_every_delivery_fault(sessions)
    final = sessions[-1]
    assert [r.message for r in final.sent()] == [Charge("o-0")]
    assert (RecordKind.DUPLICATED, Charge("o-0")) in [
        (r.kind, r.message) for r in final.faults_injected()
    ]


def test_several_fault_kinds_shrink_to_exactly_the_one_duplicate() -> None:
    sessions: list[TrackedSession] = []
    with pytest.raises(DoubleCharge):
        property_with_every_delivery_fault(sessions)
    final = sessions[-1]
    assert [(r.kind, r.message) for r in final.faults_injected()] == [
        (RecordKind.DUPLICATED, Charge("o-0"))
    ]


def replayable(record: Record) -> tuple[Any, ...]:
    return (
        record.kind,
        record.message,
        record.message_id,
        record.correlation_id,
        record.causation_id,
        record.endpoint,
        record.handler,
        record.attempt,
        repr(record.exception),
        record.time,
        dict(record.detail),
    )


def test_a_failing_run_replays_identically_from_its_seed() -> None:
    outcomes = []
    for _ in range(2):
        sessions: list[TrackedSession] = []
        with pytest.raises(DoubleCharge) as caught:
            property_with_every_delivery_fault(sessions)
        final = sessions[-1]
        outcomes.append(
            (
                str(caught.value),
                getattr(caught.value, "__notes__", []),
                [replayable(r) for r in final.records],
                len(sessions),
            )
        )
    assert outcomes[0] == outcomes[1]
    notes = outcomes[0][1]
    # Hypothesis prints each fault decision it drew, so the failure can be read.
    assert any("duplicate" in note and "Charge" in note for note in notes)


def test_delays_and_backoff_jitter_replay_from_the_seed() -> None:
    """Drawn delays and the bus's jitter (one seeded Random) give the same times again."""

    class Flaky(Exception):
        pass

    def run_once() -> tuple[list[tuple[Any, ...]], str]:
        runs: list[list[tuple[Any, ...]]] = []

        @seed(99)
        @FINDS_A_BUG
        @given(count=st.integers(1, 4), data=st.data())
        def prop(count: int, data: st.DataObject) -> None:
            attempts: Counter[str] = Counter()

            async def note(command: Note) -> None:
                attempts[command.text] += 1
                if attempts[command.text] == 1:
                    raise Flaky(command.text)

            module = Module("flaky").bind_request(Note, note)
            endpoint = local_queue("default", backoff=Backoff(initial=1.0, jitter=0.5))

            async def scenario() -> None:
                faults = FaultInjector(data, max_delay=3.0).delay()
                async with (
                    testing.open_test_bus(module, endpoints=[endpoint]) as bus,
                    tracked(bus, faults=faults) as session,
                ):
                    for n in range(count):
                        await bus.send(Note(str(n)))
                runs.append([replayable(r) for r in session.records])
                # Fails once some note is handled later than 2.5 s (a delay plus jitter).
                late = [r for r in session.handled() if r.time > 2.5]
                assert not late, late

            testing.run(scenario)

        with pytest.raises(AssertionError) as caught:
            prop()
        return runs[-1], str(caught.value)

    first = run_once()
    assert first == run_once()
    times = {record[9] for record in first[0]}
    assert any(t != int(t) for t in times)  # jittered or drawn, not round numbers
