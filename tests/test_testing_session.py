"""triobus.testing.tracked: what a session records, and wait_quiet."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from triobus import (
    Backoff,
    BusRunner,
    Command,
    DeadLetterReason,
    Event,
    Module,
    Phase,
    Request,
    current_bus,
    local_queue,
    route,
    route_module,
    testing,
)
from triobus.testing import FaultInjector, QuietTimeout, Record, RecordKind, tracked

MockClock = trio.testing.MockClock


# ---------------------------------------------------------------- messages and handlers


@attrs.frozen
class PlaceOrder(Command):
    order_id: str


@attrs.frozen
class OrderPlaced(Event):
    order_id: str


@attrs.frozen
class GetTotal(Request[int]):
    order_id: str


@attrs.frozen
class Flaky(Command):
    """Its handler fails ``failures`` times, then succeeds."""

    key: str
    failures: int


@attrs.frozen
class Broken(Request[int]):
    pass


@attrs.frozen
class Hang(Command):
    pass


@attrs.frozen
class Slow(Command):
    seconds: float


@attrs.frozen
class Stage(Command):
    """A cascade: stage n sleeps n seconds, then hands over to stage n + 1."""

    n: int


@attrs.frozen
class StageDone(Event):
    n: int


class Oops(Exception):
    pass


class Shop:
    """Handlers (bound methods, so records name them ``Shop.<name>``) and what they did."""

    def __init__(self) -> None:
        self.placed: list[str] = []
        self.attempts: Counter[object] = Counter()
        self.done: list[tuple[str, float]] = []

    async def place_order(self, command: PlaceOrder) -> None:
        await current_bus().publish(OrderPlaced(command.order_id))

    async def order_placed(self, event: OrderPlaced) -> None:
        self.placed.append(event.order_id)

    async def get_total(self, query: GetTotal) -> int:
        return len(query.order_id)

    async def flaky(self, command: Flaky) -> None:
        self.attempts[command] += 1
        if self.attempts[command] <= command.failures:
            raise Oops(f"attempt {self.attempts[command]} of {command.key}")
        self.done.append((command.key, trio.current_time()))

    async def broken(self, query: Broken) -> int:
        raise Oops("broken")

    async def hang(self, command: Hang) -> None:
        await trio.sleep_forever()

    async def slow(self, command: Slow) -> None:
        await trio.sleep(command.seconds)
        self.done.append(("slow", trio.current_time()))

    async def stage(self, command: Stage) -> None:
        await trio.sleep(command.n)
        if command.n < 3:
            await current_bus().send(Stage(command.n + 1))
        else:
            await current_bus().publish(StageDone(command.n))

    async def stage_done(self, event: StageDone) -> None:
        await trio.sleep(1)
        self.done.append(("stages", trio.current_time()))

    def module(self) -> Module:
        return (
            Module("shop")
            .bind_request(PlaceOrder, self.place_order)
            .bind_event(OrderPlaced, [self.order_placed])
            .bind_request(GetTotal, self.get_total)
            .bind_request(Flaky, self.flaky)
            .bind_request(Broken, self.broken)
            .bind_request(Hang, self.hang)
            .bind_request(Slow, self.slow)
            .bind_request(Stage, self.stage)
            .bind_event(StageDone, [self.stage_done])
        )


def open_shop(shop: Shop, **options: Any) -> BusRunner:
    options.setdefault(
        "endpoints",
        [
            local_queue("flaky", retries=2, backoff=Backoff(initial=1.0, factor=2.0, jitter=0.0)),
            local_queue("stage-even"),
            local_queue("stage-odd"),
        ],
    )
    options.setdefault("routing", [route(Flaky).to("flaky")])
    return testing.open_test_bus(shop.module(), **options)


class Coin(random.Random):
    """A fault coin that always says yes; a delay is ``fraction`` of ``max_delay``."""

    def __init__(self, fraction: float = 0.25) -> None:
        assert fraction < 0.5  # the injector applies a fault when random() < 0.5
        super().__init__(0)
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


def kinds(records: list[Record]) -> list[tuple[str, str]]:
    return [(str(r.kind), type(r.message).__name__) for r in records]


# ---------------------------------------------------------------- dispatch records


async def test_sent_published_and_invoked_are_recorded_with_their_context(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus, tracked(bus) as session:
        await bus.send(PlaceOrder("o-1"), headers={"tenant": "t1"})
        assert await bus.invoke(GetTotal("o-22")) == 4
        await session.wait_quiet()

    [sent] = session.sent()
    assert sent.kind is RecordKind.SENT
    assert sent.message == PlaceOrder("o-1")
    assert sent.message_name == f"{__name__}.PlaceOrder"
    assert sent.message_id
    assert sent.correlation_id == sent.message_id  # a root message starts its chain
    assert sent.causation_id is None
    assert sent.endpoint == "default"
    assert sent.exception is None

    [published] = session.published()
    assert published.message == OrderPlaced("o-1")
    assert published.message_name == f"{__name__}.OrderPlaced"
    assert published.message_id not in (None, sent.message_id)
    assert published.correlation_id == sent.message_id
    assert published.causation_id == sent.message_id  # published by PlaceOrder's handler
    assert published.endpoint == "default"

    [invoked] = session.invoked()
    assert invoked.message == GetTotal("o-22")
    assert invoked.correlation_id == invoked.message_id
    assert invoked.causation_id is None
    assert invoked.endpoint == "requests"

    ids = {sent.message_id, published.message_id, invoked.message_id}
    assert len(ids) == 3
    assert shop.placed == ["o-1"]


async def test_handled_records_name_the_endpoint_the_handler_and_the_attempt(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus, tracked(bus) as session:
        await bus.send(PlaceOrder("o-1"))
        await bus.invoke(GetTotal("o-1"))
        await session.wait_quiet()

    [sent] = session.sent(PlaceOrder)
    [placed] = session.handled(PlaceOrder)
    assert placed.kind is RecordKind.HANDLED
    assert placed.message_id == sent.message_id
    assert placed.correlation_id == sent.correlation_id
    assert placed.endpoint is not None and placed.endpoint.endswith("/default")
    assert placed.handler == "Shop.place_order"
    assert placed.attempt == 1
    assert placed.exception is None

    [event] = session.handled(OrderPlaced)
    assert event.handler == "Shop.order_placed"
    assert event.causation_id == sent.message_id
    assert event.message_id == session.published(OrderPlaced)[0].message_id

    [query] = session.handled(GetTotal)
    assert query.handler == "Shop.get_total"
    assert query.endpoint is not None and query.endpoint.endswith("/requests")
    assert query.message_id == session.invoked(GetTotal)[0].message_id
    # Records come in the order things happened.
    assert session.records.index(sent) < session.records.index(placed)
    assert session.records.index(placed) < session.records.index(event)


async def test_failures_retries_and_the_dead_letter_are_recorded_per_attempt(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus, tracked(bus) as session:
        start = trio.current_time()
        await bus.send(Flaky("f", failures=99))
        await session.wait_quiet()

    [sent] = session.sent(Flaky)
    failed = session.failed(Flaky)
    assert [r.attempt for r in failed] == [1, 2, 3]
    assert all(isinstance(r.exception, Oops) for r in failed)
    assert [str(r.exception) for r in failed] == [f"attempt {n} of f" for n in (1, 2, 3)]
    assert {r.handler for r in failed} == {"Shop.flaky"}
    assert {r.message_id for r in failed} == {sent.message_id}
    assert all(r.endpoint is not None and r.endpoint.endswith("/flaky") for r in failed)
    # The backoff (1 s, then 2 s) separates the attempts.
    assert [r.time - start for r in failed] == [0.0, 1.0, 3.0]

    retried = session.retried(Flaky)
    assert [r.attempt for r in retried] == [2, 3]  # the attempt that comes next
    assert {r.handler for r in retried} == {"Shop.flaky"}
    assert not session.handled(Flaky)

    [letter] = session.dead_letters
    assert letter.kind is RecordKind.DEAD_LETTERED
    assert letter.message == Flaky("f", failures=99)
    assert letter.message_id == sent.message_id
    assert letter.message_name == f"{__name__}.Flaky"
    assert letter.correlation_id == sent.correlation_id
    assert letter.endpoint is not None and letter.endpoint.endswith("/flaky")
    assert letter.handler == "Shop.flaky"
    assert letter.attempt == 3
    assert letter.exception is failed[-1].exception
    assert letter.detail["reason"] == DeadLetterReason.FAILED
    assert letter.time - start == 3.0
    assert kinds(session.records) == [
        ("sent", "Flaky"),
        ("failed", "Flaky"),
        ("retried", "Flaky"),
        ("failed", "Flaky"),
        ("retried", "Flaky"),
        ("failed", "Flaky"),
        ("dead_lettered", "Flaky"),
    ]


async def test_a_retry_that_succeeds_is_recorded_as_failed_retried_handled(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus, tracked(bus) as session:
        await bus.send(Flaky("f", failures=1))
        await session.wait_quiet()
    assert [(str(r.kind), r.attempt) for r in session.records] == [
        ("sent", None),
        ("failed", 1),
        ("retried", 2),
        ("handled", 2),
    ]
    assert not session.dead_letters


async def test_a_failed_invoke_is_recorded_once_and_never_retried(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus, tracked(bus) as session:
        with pytest.raises(Oops, match="broken"):
            await bus.invoke(Broken())
        await session.wait_quiet()
    [failed] = session.failed(Broken)
    assert failed.attempt == 1
    assert isinstance(failed.exception, Oops)
    assert failed.handler == "Shop.broken"
    assert failed.message_id == session.invoked(Broken)[0].message_id
    assert not session.retried()
    assert not session.dead_letters


async def test_a_dead_letter_from_a_full_mailbox_is_recorded_with_its_reason(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    endpoints = [local_queue("tiny", capacity=1, overflow="drop_newest")]
    async with (
        open_shop(shop, endpoints=endpoints, routing=[route(Slow).to("tiny")]) as bus,
        tracked(bus) as session,
    ):
        await bus.send(Slow(1.0))
        await trio.testing.wait_all_tasks_blocked()  # the first is in hand
        await bus.send(Slow(2.0))  # waits
        await bus.send(Slow(3.0))  # refused: the mailbox holds one
        await session.wait_quiet()
    [letter] = session.dead_letters
    assert letter.detail["reason"] == DeadLetterReason.MAILBOX_FULL
    assert letter.message == Slow(3.0)
    assert letter.message_id == session.sent(Slow)[2].message_id
    assert letter.endpoint is not None and letter.endpoint.endswith("/tiny")
    assert [r.message for r in session.handled(Slow)] == [Slow(1.0), Slow(2.0)]


# ---------------------------------------------------------------- queries


async def test_queries_filter_by_class_by_name_and_by_chain(autojump_clock: MockClock) -> None:
    shop = Shop()
    async with open_shop(shop) as bus, tracked(bus) as session:
        await bus.send(PlaceOrder("o-1"))
        await bus.send(PlaceOrder("o-2"))
        await bus.invoke(GetTotal("o-1"))
        await session.wait_quiet()

    assert session.messages(RecordKind.HANDLED, OrderPlaced) == [
        OrderPlaced("o-1"),
        OrderPlaced("o-2"),
    ]
    assert session.handled(f"{__name__}.OrderPlaced") == session.handled(OrderPlaced)
    assert session.messages(RecordKind.SENT, PlaceOrder) == [PlaceOrder("o-1"), PlaceOrder("o-2")]
    assert session.messages(RecordKind.HANDLED, Command) == [  # a base class matches subclasses
        PlaceOrder("o-1"),
        PlaceOrder("o-2"),
    ]
    assert len(session.handled()) == 5
    assert session.of_kind(RecordKind.INVOKED) == session.invoked(GetTotal)
    assert session.handled("no.such.Message") == []

    first = session.sent(PlaceOrder)[0]
    chain = session.chain(first.correlation_id or "")
    assert kinds(chain) == [
        ("sent", "PlaceOrder"),
        ("published", "OrderPlaced"),
        ("handled", "PlaceOrder"),
        ("handled", "OrderPlaced"),
    ]
    assert {r.message for r in chain} == {PlaceOrder("o-1"), OrderPlaced("o-1")}
    assert session.faults_injected() == []
    assert session.dead_letters == []


# ---------------------------------------------------------------- wait_quiet


async def test_wait_quiet_waits_for_a_whole_cascade_across_endpoints(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    routing = [route(Stage).to("stage-odd"), route(StageDone).to("stage-even")]
    async with open_shop(shop, routing=routing) as bus, tracked(bus) as session:
        start = trio.current_time()
        await bus.send(Stage(1))
        assert trio.current_time() == start  # send returns once accepted
        await session.wait_quiet()
        # Stage 1, 2 and 3 sleep 1 + 2 + 3 s, then StageDone's handler 1 s.
        assert trio.current_time() - start == 7.0
        assert shop.done == [("stages", start + 7.0)]
        assert bus.in_flight == 0
        assert [r.message for r in session.handled()] == [
            Stage(1),
            Stage(2),
            Stage(3),
            StageDone(3),
        ]


async def test_wait_quiet_waits_for_retries_with_backoff(autojump_clock: MockClock) -> None:
    shop = Shop()
    async with open_shop(shop) as bus, tracked(bus) as session:
        start = trio.current_time()
        await bus.send(Flaky("f", failures=2))
        await session.wait_quiet()
        assert trio.current_time() - start == 3.0  # backoff 1 s, then 2 s
        assert shop.done == [("f", start + 3.0)]
        assert session.handled(Flaky)[0].attempt == 3
        assert bus.in_flight == 0


async def test_wait_quiet_waits_for_a_delayed_delivery(autojump_clock: MockClock) -> None:
    shop = Shop()
    faults = FaultInjector(Coin(0.25), max_delay=8.0).delay(OrderPlaced)
    async with open_shop(shop) as bus, tracked(bus, faults=faults) as session:
        start = trio.current_time()
        await bus.send(PlaceOrder("o-1"))
        await session.wait_quiet()
        [delayed] = session.faults_injected()
        assert delayed.kind is RecordKind.DELAYED
        assert delayed.detail["seconds"] == 2.0
        assert trio.current_time() - start == 2.0
        assert shop.placed == ["o-1"]
        assert session.handled(OrderPlaced)[0].time - start == 2.0


async def test_wait_quiet_waits_for_a_held_back_delivery(autojump_clock: MockClock) -> None:
    shop = Shop()
    faults = FaultInjector(Coin(), reorder_window=2.0).reorder(max_times=1)
    async with open_shop(shop) as bus, tracked(bus, faults=faults) as session:
        start = trio.current_time()
        await bus.send(PlaceOrder("o-1"))  # held back; nothing comes to overtake it
        await session.wait_quiet()
        assert trio.current_time() - start == 2.0
        assert shop.placed == ["o-1"]


async def test_wait_quiet_waits_for_an_invoke_running_elsewhere(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    endpoints = [local_queue("slow-requests")]

    async with (
        open_shop(shop, endpoints=endpoints, routing=[route(Slow).to("slow-requests")]) as bus,
        tracked(bus) as session,
        trio.open_nursery() as nursery,
    ):
        start = trio.current_time()
        nursery.start_soon(bus.invoke, Slow(5.0))
        await trio.testing.wait_all_tasks_blocked()
        await session.wait_quiet()
        assert trio.current_time() - start == 5.0
        assert shop.done == [("slow", start + 5.0)]


async def test_wait_quiet_returns_at_once_when_nothing_is_in_flight(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus, tracked(bus) as session:
        start = trio.current_time()
        await session.wait_quiet()
        await session.wait_quiet(timeout=0)
        assert trio.current_time() == start


async def test_quiet_timeout_fails_loudly_on_a_handler_that_never_finishes(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    start = trio.current_time()
    endpoints = [local_queue("stuck")]
    with pytest.raises(QuietTimeout) as caught:
        async with (
            open_shop(shop, endpoints=endpoints, routing=[route(Hang).to("stuck")]) as bus,
            tracked(bus) as session,
        ):
            await bus.send(PlaceOrder("o-1"))
            await bus.send(Hang())
            await session.wait_quiet(timeout=3.0)
    assert isinstance(caught.value, AssertionError)  # a test fails, whatever catches errors
    assert trio.current_time() - start >= 3.0
    message = str(caught.value)
    assert "not quiet after 3.0 s" in message
    assert "1 message(s) still in flight" in message
    assert "Hang" in message
    assert shop.placed == ["o-1"]  # everything else was handled


async def test_quiet_timeout_fails_loudly_when_the_session_ends_busy(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    start = trio.current_time()
    with pytest.raises(QuietTimeout, match="not quiet after 2"):
        async with open_shop(shop) as bus, tracked(bus, quiet_timeout=2.0):
            await bus.send(Hang())
    assert trio.current_time() - start >= 2.0


async def test_wait_quiet_uses_the_session_quiet_timeout_by_default(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    with pytest.raises(QuietTimeout, match=r"not quiet after 4\.5 s"):
        async with open_shop(shop) as bus, tracked(bus, quiet_timeout=4.5) as session:
            await bus.send(Hang())
            start = trio.current_time()
            try:
                await session.wait_quiet()
            finally:
                assert trio.current_time() - start == 4.5


@pytest.mark.parametrize("quiet_timeout", [0, -1.0, math.nan])
async def test_tracked_refuses_a_quiet_timeout_that_is_not_positive(
    autojump_clock: MockClock, quiet_timeout: float
) -> None:
    async with open_shop(Shop()) as bus:
        with pytest.raises(ValueError, match="quiet_timeout"):
            async with tracked(bus, quiet_timeout=quiet_timeout):
                pass  # pragma: no cover
        async with tracked(bus) as session:  # the refusal left the bus untracked
            await bus.send(PlaceOrder("o-1"))
        assert len(session.handled()) == 2


# ---------------------------------------------------------------- one session at a time


async def test_consecutive_sessions_on_one_bus_do_not_leak_into_each_other(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus:
        async with tracked(bus) as first:
            await bus.send(Slow(2.0))  # still running when the block ends
            await bus.send(PlaceOrder("o-1"))
            await bus.send(Flaky("f", failures=99))  # retried, then a dead letter
        # Leaving the block waited until everything above was done.
        assert bus.in_flight == 0
        first_records = list(first.records)
        assert len(first.handled(Slow)) == 1
        assert len(first.dead_letters) == 1

        async with tracked(bus) as second:
            await bus.send(PlaceOrder("o-2"))
            await second.wait_quiet()

    assert first.records == first_records  # nothing was added after the first ended
    assert [r.message for r in second.sent()] == [PlaceOrder("o-2")]
    assert [r.message for r in second.handled()] == [PlaceOrder("o-2"), OrderPlaced("o-2")]
    assert second.dead_letters == []
    assert not {r.message_id for r in first.records} & {r.message_id for r in second.records}


async def test_a_session_ended_by_an_error_leaks_nothing_into_the_next(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus:
        with pytest.raises(Oops):
            async with tracked(bus) as first:
                await bus.send(Slow(1.0))
                raise Oops("the test body failed")
        async with tracked(bus) as second:
            await bus.send(PlaceOrder("o-2"))
            await second.wait_quiet()
    assert {r.message for r in second.records} == {PlaceOrder("o-2"), OrderPlaced("o-2")}
    assert [r.message for r in second.handled()] == [PlaceOrder("o-2"), OrderPlaced("o-2")]
    assert [r.message for r in first.records] == [Slow(1.0), Slow(1.0)]  # sent, then handled


async def test_a_second_concurrent_session_on_one_bus_is_refused(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus:
        async with tracked(bus) as first:
            with pytest.raises(RuntimeError, match="tracked by another session"):
                async with tracked(bus):
                    pass  # pragma: no cover
            # The refusal left the first session attached.
            await bus.send(PlaceOrder("o-1"))
            await first.wait_quiet()
        assert len(first.handled()) == 2
        async with tracked(bus) as later:  # once the first ended, another may start
            await bus.send(PlaceOrder("o-2"))
        assert len(later.handled()) == 2


async def test_a_session_on_another_bus_runs_alongside(autojump_clock: MockClock) -> None:
    async with (
        open_shop(Shop(), name="bus-a") as bus_a,
        open_shop(Shop(), name="bus-b") as bus_b,
        tracked(bus_a) as session_a,
        tracked(bus_b) as session_b,
    ):
        await bus_a.send(PlaceOrder("a"))
        await bus_b.send(PlaceOrder("b"))
        await session_a.wait_quiet()
        await session_b.wait_quiet()
    assert [r.message for r in session_a.sent()] == [PlaceOrder("a")]
    assert [r.message for r in session_b.sent()] == [PlaceOrder("b")]


# ---------------------------------------------------------------- recording gaps


@attrs.frozen
class Outer(Request[int]):
    n: int


@attrs.frozen
class Inner(Request[int]):
    n: int


async def outer(query: Outer) -> int:
    return await current_bus().invoke(Inner(query.n)) + 1


async def inner(query: Inner) -> int:
    await trio.lowlevel.checkpoint()
    return query.n


async def test_an_inline_reentrant_invoke_is_recorded_as_handled(
    autojump_clock: MockClock,
) -> None:
    module = Module("nested").bind_request(Outer, outer).bind_request(Inner, inner)
    async with (
        testing.open_test_bus(
            module, endpoints=[local_queue("solo")], routing=[route_module(module).to("solo")]
        ) as bus,
        tracked(bus) as session,
    ):
        assert await bus.invoke(Outer(1)) == 2
    assert kinds(session.invoked()) == [("invoked", "Outer"), ("invoked", "Inner")]
    assert sorted(kinds(session.handled())) == [("handled", "Inner"), ("handled", "Outer")]


async def test_a_nested_invoke_on_another_endpoint_is_recorded_as_handled(
    autojump_clock: MockClock,
) -> None:
    module = Module("nested").bind_request(Outer, outer).bind_request(Inner, inner)
    async with testing.open_test_bus(module) as bus, tracked(bus) as session:
        assert await bus.invoke(Outer(1)) == 2
    [outer_record] = session.invoked(Outer)
    [inner_record] = session.invoked(Inner)
    assert inner_record.causation_id == outer_record.message_id
    assert sorted(kinds(session.handled())) == [("handled", "Inner"), ("handled", "Outer")]


async def test_dispatches_are_recorded_when_a_plugin_is_attached(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop) as bus:
        seen: list[object] = []

        async def observe(event: Any) -> None:
            seen.append(event.message)

        bus.attach(Phase.INITIALIZE, observe)
        async with tracked(bus) as session:
            await bus.send(PlaceOrder("o-1"))
            await bus.invoke(GetTotal("o-1"))
            await session.wait_quiet()
    assert seen  # the plugin ran
    assert kinds(session.sent()) == [("sent", "PlaceOrder")]
    assert kinds(session.published()) == [("published", "OrderPlaced")]
    assert kinds(session.invoked()) == [("invoked", "GetTotal")]


async def test_a_publish_is_recorded_in_listener_exception_collection_mode(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with open_shop(shop, collect_listener_exceptions=True) as bus, tracked(bus) as session:
        await bus.publish(OrderPlaced("o-1"))
    assert shop.placed == ["o-1"]
    assert kinds(session.published()) == [("published", "OrderPlaced")]
    assert kinds(session.handled()) == [("handled", "OrderPlaced")]


# ---------------------------------------------------------------- tracking must not change the run

ORDERS = [f"o-{n}" for n in range(8)]


async def place_orders_in_a_row(shop: Shop, *, track: bool) -> list[str]:
    """Eight PlaceOrder handled one after another on one endpoint; each publishes an event."""
    async with open_shop(
        shop, endpoints=[local_queue("events")], routing=[route(OrderPlaced).to("events")]
    ) as bus:
        if track:
            async with tracked(bus) as session:
                for order_id in ORDERS:
                    await bus.send(PlaceOrder(order_id))
            assert len(session.handled(OrderPlaced)) == len(ORDERS)
        else:
            for order_id in ORDERS:
                await bus.send(PlaceOrder(order_id))
            await bus.wait_quiet()
    return shop.placed


async def test_untracked_events_released_by_one_endpoint_keep_their_order(
    autojump_clock: MockClock,
) -> None:
    assert await place_orders_in_a_row(Shop(), track=False) == ORDERS


async def test_tracking_keeps_the_order_of_messages_released_by_one_endpoint(
    autojump_clock: MockClock,
) -> None:
    # Eight in a row: a shuffle that keeps them in order has a chance of 1 in 40320.
    assert await place_orders_in_a_row(Shop(), track=True) == ORDERS
