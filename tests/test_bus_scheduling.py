"""Scheduled delivery: send and publish with ``delay=`` or ``deliver_at=``, in memory."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from triobus import (
    BusRunner,
    Command,
    DeadLetterReason,
    ErrorPolicy,
    Event,
    Module,
    Phase,
    current_bus,
    local_queue,
    open_bus,
    route,
    route_module,
    testing,
)
from triobus.testing import FaultInjector, RecordKind, tracked

#: The bus's wall clock in these tests: a fixed epoch plus trio's (mock) clock.
EPOCH = 1_000_000.0


def wall_clock() -> float:
    return EPOCH + trio.current_time()


@attrs.frozen
class Remind(Command):
    what: str


@attrs.frozen
class Trigger(Command):
    what: str


@attrs.frozen
class Ticked(Event):
    what: str


class Journal:
    """What was handled, as (trio time, label)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def note(self, label: str) -> None:
        self.calls.append((trio.current_time(), label))

    def since(self, start: float) -> list[tuple[float, str]]:
        return [(at - start, label) for at, label in self.calls]

    async def remind(self, command: Remind) -> None:
        self.note(command.what)


def reminder_bus(journal: Journal, *modules: Module, **options: object) -> BusRunner:
    module = Module("reminders").bind_request(Remind, journal.remind)
    return open_bus(
        module,
        *modules,
        endpoints=[local_queue("reminders")],
        routing=[route(Remind).to("reminders")],
        wall_clock=wall_clock,
        **options,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- when


async def test_a_delayed_send_is_handled_at_its_due_moment_never_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with reminder_bus(journal) as bus:
        start = trio.current_time()
        await bus.send(Remind("later"), delay=5)
        await trio.sleep(4.999)
        assert journal.calls == []
        assert bus.in_flight == 1
        await bus.wait_quiet()
    assert journal.since(start) == [(5, "later")]


async def test_deliver_at_takes_seconds_since_the_epoch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with reminder_bus(journal) as bus:
        start = trio.current_time()
        await bus.send(Remind("at"), deliver_at=wall_clock() + 7)
        await bus.wait_quiet()
    assert journal.since(start) == [(7, "at")]


async def test_deliver_at_takes_an_aware_datetime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with reminder_bus(journal) as bus:
        start = trio.current_time()
        moment = datetime.fromtimestamp(wall_clock() + 3, tz=UTC)
        await bus.send(Remind("utc"), deliver_at=moment)
        other_zone = moment.astimezone(tz=datetime.now().astimezone().tzinfo) + timedelta(seconds=1)
        await bus.send(Remind("local zone"), deliver_at=other_zone)
        await bus.wait_quiet()
    assert journal.since(start) == [(3, "utc"), (4, "local zone")]


@pytest.mark.parametrize("past", [1.0, 3600.0])
async def test_a_moment_in_the_past_means_now(
    autojump_clock: trio.testing.MockClock, past: float
) -> None:
    journal = Journal()
    async with reminder_bus(journal) as bus:
        await trio.sleep(10)
        start = trio.current_time()
        await bus.send(Remind("float"), deliver_at=wall_clock() - past)
        await bus.send(Remind("datetime"), deliver_at=datetime.fromtimestamp(EPOCH, tz=UTC))
        await bus.send(Remind("zero"), delay=0)
        await bus.wait_quiet()
    assert sorted(journal.since(start)) == [(0, "datetime"), (0, "float"), (0, "zero")]


async def test_scheduled_messages_are_handled_in_the_order_they_are_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with reminder_bus(journal) as bus:
        start = trio.current_time()
        await bus.send(Remind("ten"), delay=10)
        await bus.send(Remind("three"), delay=3)
        await bus.send(Remind("now"))
        await bus.wait_quiet()
    assert journal.since(start) == [(0, "now"), (3, "three"), (10, "ten")]


async def test_messages_due_at_one_moment_are_handled_in_the_order_they_were_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Waits that end in one instant wake in any order: repeat to catch it.
    for _ in range(10):
        journal = Journal()
        async with reminder_bus(journal) as bus:
            moment = wall_clock() + 5
            for label in "ABCDE":
                await bus.send(Remind(label), deliver_at=moment)
            await bus.send(Remind("F"), delay=5)
            await bus.wait_quiet()
        assert [label for _, label in journal.calls] == list("ABCDEF")


async def test_messages_sent_meanwhile_pass_a_scheduled_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with reminder_bus(journal) as bus:
        start = trio.current_time()
        await bus.send(Remind("scheduled"), delay=2)
        await trio.sleep(1)
        await bus.send(Remind("meanwhile"))
        await bus.wait_quiet()
    assert journal.since(start) == [(1, "meanwhile"), (2, "scheduled")]


async def test_a_delayed_publish_reaches_every_subscriber_at_its_due_moment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()

    async def first(event: Ticked) -> None:
        journal.note("first")

    async def second(event: Ticked) -> None:
        journal.note("second")

    async def elsewhere(event: Ticked) -> None:
        journal.note("elsewhere")

    here = Module("here").bind_event(Ticked, [first, second])
    there = Module("there").bind_event(Ticked, [elsewhere])
    async with open_bus(
        here,
        there,
        endpoints=[local_queue("here"), local_queue("there")],
        routing=[route_module(here).to("here"), route_module(there).to("there")],
        wall_clock=wall_clock,
    ) as bus:
        start = trio.current_time()
        await bus.publish(Ticked("tick"), delay=6)
        await trio.sleep(5.9)
        assert journal.calls == []
        assert bus.in_flight == 2  # one delivery per endpoint
        await bus.wait_quiet()
    assert sorted(journal.since(start)) == [(6, "elsewhere"), (6, "first"), (6, "second")]


async def test_the_default_wall_clock_follows_trios_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    module = Module("reminders").bind_request(Remind, journal.remind)
    async with open_bus(
        module, endpoints=[local_queue("reminders")], routing=[route(Remind).to("reminders")]
    ) as bus:
        start = trio.current_time()
        await bus.send(Remind("delay"), delay=3600)
        await bus.send(Remind("moment"), deliver_at=datetime.now(UTC) + timedelta(hours=2))
        await bus.wait_quiet()
    (delay_at, delay), (moment_at, moment) = journal.since(start)
    assert delay == "delay" and moment == "moment"
    assert delay_at == pytest.approx(3600, abs=1e-3)
    # The system clock moved on a little (really) between the bus's start and now().
    assert 7200 - 1e-3 <= moment_at < 7205


# ---------------------------------------------------------------- in flight, and stops


async def test_wait_quiet_waits_for_scheduled_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with reminder_bus(journal) as bus:
        start = trio.current_time()
        await bus.send(Remind("a"), delay=30)
        await bus.wait_quiet()
        assert trio.current_time() - start == 30
        assert journal.since(start) == [(30, "a")]


async def test_a_final_stop_dead_letters_the_scheduled_messages_still_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with reminder_bus(journal, drain_timeout=10) as bus:
        start = trio.current_time()
        await bus.send(Remind("soon"), delay=5)
        await bus.send(Remind("too late"), delay=100)
    assert journal.since(start) == [(5, "soon")]
    assert trio.current_time() - start == pytest.approx(10)  # not 100
    letters = list(bus.dead_letters)
    assert [(letter.message, letter.reason) for letter in letters] == [
        (Remind("too late"), DeadLetterReason.SHUTDOWN)
    ]
    assert letters[0].context["message_name"].endswith("Remind")
    assert bus.in_flight == 0


async def test_a_stop_as_a_scheduled_message_falls_due_handles_or_dead_letters_it_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The wait ends in the same instant as the drain: whichever task trio
    # runs first, the message is handled or dead-lettered, once, and the bus
    # closes cleanly.
    for _ in range(20):
        journal = Journal()
        async with reminder_bus(journal, drain_timeout=5) as bus:
            await bus.send(Remind("edge"), delay=5)
        letters = [letter.message for letter in bus.dead_letters]
        assert len(journal.calls) + len(letters) == 1
        assert bus.in_flight == 0


async def test_a_scheduled_message_released_during_the_final_drain_is_a_shutdown_dead_letter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()

    async def trigger(command: Trigger) -> None:
        await current_bus().send(Remind(command.what), delay=1)  # held until the handler ends
        await trio.sleep(2)  # ends while the endpoint stops

    module = Module("triggers").bind_request(Trigger, trigger).bind_request(Remind, journal.remind)
    async with open_bus(
        module,
        endpoints=[local_queue("q", shutdown=30)],
        routing=[route(Trigger).to("q"), route(Remind).to("q")],
        wall_clock=wall_clock,
        drain_timeout=1,
    ) as bus:
        await bus.send(Trigger("from the backlog"))
    assert journal.calls == []  # its due moment came after the stop
    assert [(letter.message, letter.reason) for letter in bus.dead_letters] == [
        (Remind("from the backlog"), DeadLetterReason.SHUTDOWN)
    ]
    assert bus.in_flight == 0


def blocking_bus(journal: Journal, **queue: object) -> BusRunner:
    """One queue of capacity 1 whose handler holds ``block`` for 3 s."""

    async def remind(command: Remind) -> None:
        journal.note(command.what)
        if command.what == "block":
            await trio.sleep(3)

    module = Module("reminders").bind_request(Remind, remind)
    return open_bus(
        module,
        endpoints=[local_queue("reminders", capacity=1, **queue)],  # type: ignore[arg-type]
        routing=[route(Remind).to("reminders")],
        wall_clock=wall_clock,
        drain_timeout=1,
    )


async def test_a_due_message_waiting_for_room_when_its_queue_stops_is_a_dead_letter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with blocking_bus(journal, shutdown=0.5) as bus:
        await bus.send(Remind("due"), delay=0.5)
        await bus.send(Remind("block"))
        await bus.send(Remind("queued"))  # the queue is full when "due" falls due
    reasons = {letter.message: letter.reason for letter in bus.dead_letters}
    assert reasons[Remind("due")] is DeadLetterReason.STOPPED
    assert [label for _, label in journal.calls] == ["block"]
    assert bus.in_flight == 0


async def test_a_due_message_a_full_fail_queue_refuses_is_a_dead_letter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    async with blocking_bus(journal, overflow="fail") as bus:
        start = trio.current_time()
        await bus.send(Remind("due"), delay=1)
        await bus.send(Remind("block"))
        await trio.sleep(0.1)  # "block" in hand
        await bus.send(Remind("queued"))
        await bus.wait_quiet()
        letters = [(letter.message, letter.reason) for letter in bus.dead_letters]
        await bus.send(Remind("after"))  # the endpoint keeps going
        await bus.wait_quiet()
    assert letters == [(Remind("due"), DeadLetterReason.MAILBOX_FULL)]
    assert journal.since(start) == [(0, "block"), (3, "queued"), (3, "after")]


# ---------------------------------------------------------------- from inside a handler


def trigger_module(journal: Journal, *, work: float, delay: float, fail: bool = False) -> Module:
    async def trigger(command: Trigger) -> None:
        await current_bus().send(Remind(command.what), delay=delay)
        await trio.sleep(work)
        journal.note("trigger done")
        if fail:
            raise RuntimeError("the trigger failed after sending")

    return Module("triggers").bind_request(Trigger, trigger)


def trigger_bus(journal: Journal, module: Module, policy: ErrorPolicy) -> BusRunner:
    reminders = Module("reminders").bind_request(Remind, journal.remind)
    return open_bus(
        module,
        reminders,
        endpoints=[local_queue("triggers", errors=policy), local_queue("reminders")],
        routing=[route(Trigger).to("triggers"), route(Remind).to("reminders")],
        wall_clock=wall_clock,
    )


async def test_a_scheduled_send_in_a_handler_is_due_from_the_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    module = trigger_module(journal, work=3, delay=10)
    async with trigger_bus(journal, module, ErrorPolicy()) as bus:
        start = trio.current_time()
        await bus.send(Trigger("ping"))
        await bus.wait_quiet()
    assert journal.since(start) == [(3, "trigger done"), (10, "ping")]


async def test_a_scheduled_send_in_a_handler_waits_for_the_handler_to_succeed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    module = trigger_module(journal, work=5, delay=2)
    async with trigger_bus(journal, module, ErrorPolicy()) as bus:
        start = trio.current_time()
        await bus.send(Trigger("ping"))
        await bus.wait_quiet()
    assert journal.since(start) == [(5, "trigger done"), (5, "ping")]


async def test_a_scheduled_send_in_a_failed_handler_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    module = trigger_module(journal, work=1, delay=2, fail=True)
    async with trigger_bus(journal, module, ErrorPolicy().otherwise().dead_letter()) as bus:
        start = trio.current_time()
        await bus.send(Trigger("ping"))
        await bus.wait_quiet()
        await trio.sleep(60)
        assert bus.in_flight == 0
        letters = [(letter.message, letter.reason) for letter in bus.dead_letters]
    assert journal.since(start) == [(1, "trigger done")]
    assert letters == [(Trigger("ping"), DeadLetterReason.FAILED)]


async def test_only_the_attempt_that_succeeded_sends_its_scheduled_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    tries: list[float] = []

    async def trigger(command: Trigger) -> None:
        tries.append(trio.current_time())
        await current_bus().send(Remind(f"{command.what} #{len(tries)}"), delay=2)
        if len(tries) < 3:
            raise ConnectionError("not yet")

    module = Module("triggers").bind_request(Trigger, trigger)
    policy = ErrorPolicy().otherwise().schedule_retry(1, 1)
    async with trigger_bus(journal, module, policy) as bus:
        start = trio.current_time()
        await bus.send(Trigger("ping"))
        await bus.wait_quiet()
    assert [at - start for at in tries] == [0, 1, 2]
    assert journal.since(start) == [(4, "ping #3")]


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": -1}, "delay= takes a finite number of seconds >= 0, got -1"),
        ({"delay": math.nan}, "delay= takes a finite number of seconds >= 0, got nan"),
        ({"delay": math.inf}, "delay= takes a finite number of seconds >= 0, got inf"),
        ({"delay": "5"}, "delay= takes a finite number of seconds >= 0"),
        ({"delay": True}, "delay= takes a finite number of seconds >= 0"),
        ({"delay": 1, "deliver_at": EPOCH}, "give delay= or deliver_at=, not both"),
        ({"deliver_at": datetime(2030, 1, 1)}, "deliver_at= takes an aware datetime"),
        ({"deliver_at": math.nan}, "deliver_at= takes seconds since the epoch or an aware"),
        ({"deliver_at": math.inf}, "deliver_at= takes seconds since the epoch or an aware"),
        ({"deliver_at": "tomorrow"}, "deliver_at= takes seconds since the epoch or an aware"),
    ],
)
async def test_a_bad_schedule_raises_a_value_error_and_sends_nothing(
    autojump_clock: trio.testing.MockClock, options: dict[str, object], message: str
) -> None:
    journal = Journal()

    async def ticked(event: Ticked) -> None:
        journal.note("ticked")

    events = Module("events").bind_event(Ticked, [ticked])
    async with reminder_bus(journal, events) as bus:
        with pytest.raises(ValueError, match=message):
            await bus.send(Remind("bad"), **options)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=message):
            await bus.publish(Ticked("bad"), **options)  # type: ignore[arg-type]
        assert bus.in_flight == 0
        await trio.sleep(100)
    assert journal.calls == []


# ---------------------------------------------------------------- other dispatch modes


async def test_scheduling_works_with_dispatch_plugins_attached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    phases: list[str] = []

    async def ticked(event: Ticked) -> None:
        journal.note(event.what)

    events = Module("events").bind_event(Ticked, [ticked])
    async with reminder_bus(journal, events) as bus:
        bus.attach(Phase.ROUTE, lambda event: phases.append(str(event.kind)))
        start = trio.current_time()
        await bus.send(Remind("sent"), delay=4)
        await bus.publish(Ticked("published"), deliver_at=wall_clock() + 2)
        await bus.wait_quiet()
    assert journal.since(start) == [(2, "published"), (4, "sent")]
    assert len(phases) == 2


async def test_a_scheduled_publish_cannot_collect_listener_exceptions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()

    async def ticked(event: Ticked) -> None:
        journal.note(event.what)

    events = Module("events").bind_event(Ticked, [ticked])
    async with open_bus(events, collect_listener_exceptions=True, wall_clock=wall_clock) as bus:
        with pytest.raises(ValueError, match="collect_listener_exceptions"):
            await bus.publish(Ticked("scheduled"), delay=5)
        bus.attach(Phase.ROUTE, lambda event: None)
        with pytest.raises(ValueError, match="collect_listener_exceptions"):
            await bus.publish(Ticked("scheduled with plugins"), delay=5)
        await bus.publish(Ticked("now"))
        await trio.sleep(10)
    assert [label for _, label in journal.calls] == ["now"]


class AlwaysFault(random.Random):
    """A fault coin that always says yes (the injector faults when random() < 0.5)."""

    def random(self) -> float:
        return 0.25


async def test_a_duplicated_scheduled_message_is_not_handled_early_either(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    faults = FaultInjector(AlwaysFault(0)).duplicate(Remind)
    async with reminder_bus(journal) as bus, tracked(bus, faults=faults) as session:
        start = trio.current_time()
        await bus.send(Remind("twice"), delay=5)
        await session.wait_quiet()
        assert [record.kind for record in session.faults_injected()] == [RecordKind.DUPLICATED]
    assert journal.since(start) == [(5, "twice"), (5, "twice")]


# ---------------------------------------------------------------- property


@given(
    delays=st.lists(st.integers(0, 20) | st.sampled_from([0.5, 2.25]), min_size=1, max_size=12),
    capacity=st.sampled_from([1, 3, math.inf]),
)
@settings(max_examples=40, deadline=None)
def test_scheduled_messages_are_handled_at_their_moment_in_due_then_send_order(
    delays: list[float], capacity: float
) -> None:
    async def scenario() -> list[tuple[float, str]]:
        journal = Journal()
        module = Module("reminders").bind_request(Remind, journal.remind)
        async with open_bus(
            module,
            endpoints=[local_queue("reminders", capacity=capacity)],
            routing=[route(Remind).to("reminders")],
            wall_clock=wall_clock,
        ) as bus:
            start = trio.current_time()
            for index, delay in enumerate(delays):
                await bus.send(Remind(str(index)), delay=delay)
            await bus.wait_quiet()
            assert bus.in_flight == 0
        return journal.since(start)

    calls = testing.run(scenario)
    expected = sorted(range(len(delays)), key=lambda index: (delays[index], index))
    assert [label for _, label in calls] == [str(index) for index in expected]
    assert all(at == delays[int(label)] for at, label in calls)  # never early, never late
