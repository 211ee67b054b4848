"""Actors: receive, tell, ask, lifecycle hooks, deadlock detection, dead letters."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from triobus import (
    DEFAULT_ASK_TIMEOUT,
    Actor,
    ActorRef,
    ActorStartError,
    ActorStopped,
    ActorSystem,
    AskTimeout,
    ChildState,
    DeadLetter,
    DeadLetterReason,
    DeadlockError,
    MailboxFull,
    MailboxSpec,
    TriobusError,
)

MockClock = trio.testing.MockClock


class Echo(Actor):
    async def receive(self, message: Any) -> Any:
        return message


class Ping:
    """A message type with a recognisable name."""


class Crash(Exception):
    """The failure test actors raise on purpose."""


class Recorder(Actor):
    """Logs what it handles; ``"boom"`` crashes it, ``("sleep", s, m)`` takes ``s`` seconds."""

    def __init__(self, log: list[Any], incarnation: int = 0) -> None:
        self.log = log
        self.incarnation = incarnation

    async def receive(self, message: Any) -> Any:
        if message == "boom":
            raise Crash("boom")
        if isinstance(message, tuple) and message[0] == "sleep":
            await trio.sleep(message[1])
            message = message[2]
        self.log.append(message)
        return (self.incarnation, message)


def recorder_factory(log: list[Any]) -> Any:
    count = 0

    def make() -> Recorder:
        nonlocal count
        count += 1
        return Recorder(log, count)

    return make


class Gated(Actor):
    """Waits on ``gate`` before handling each message; logs what it handled."""

    def __init__(self, gate: trio.Event, log: list[Any]) -> None:
        self.gate = gate
        self.log = log

    async def receive(self, message: Any) -> Any:
        await self.gate.wait()
        self.log.append(message)
        return message


class Stuck(Actor):
    async def receive(self, message: Any) -> Any:
        await trio.sleep_forever()


class Forward(Actor):
    """``receive([r1, r2, ...])`` asks ``r1`` with ``[r2, ...]``; an empty list answers ``"end"``.

    A ``DeadlockError`` is returned (not raised) so the test sees it.
    """

    async def receive(self, message: Any) -> Any:
        if not message:
            return "end"
        try:
            return await message[0].ask(message[1:])
        except DeadlockError as exc:
            return exc


# ---------------------------------------------------------------- basics


async def test_ask_returns_what_receive_returned(autojump_clock: MockClock) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Echo, name="echo")
        assert await ref.ask({"x": 1}) == {"x": 1}
        assert await ref.ask(None) is None


async def test_post_ask_posts_at_the_call_and_its_awaitable_gives_the_reply(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(lambda: Recorder(log), name="rec")
        await ref.ask("warm")  # the actor's task runs and waits on its empty mailbox
        reply = ref.post_ask("m")
        ref.tell_nowait("after")  # queued behind the ask: posted at the call, not at the await
        assert await reply == (0, "m")
        await ref.ask("sync")
        assert log == ["warm", "m", "after", "sync"]
        with pytest.raises(ValueError, match="positive number of seconds"):
            ref.post_ask("bad", timeout=0)  # raised by the call, nothing to await
        await ref.stop()
        with pytest.raises(ActorStopped, match="/app/rec is stopped"):
            ref.post_ask("late")


async def test_ref_has_name_and_path_from_the_system_root(autojump_clock: MockClock) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Echo, name="echo")
        sup = await system.spawn_supervisor("workers")
        nested = await sup.spawn(Echo, name="w1")
        assert (ref.name, ref.path) == ("echo", "/app/echo")
        assert (nested.name, nested.path) == ("w1", "/app/workers/w1")
        assert repr(nested) == "<ActorRef /app/workers/w1>"
        assert ref.stopped is False


async def test_actor_sees_its_own_ref(autojump_clock: MockClock) -> None:
    class Self(Actor):
        async def receive(self, message: Any) -> Any:
            return self.ref

    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Self, name="me")
        own = await ref.ask("who")
        assert own == ref
        assert hash(own) == hash(ref)
        assert own != await system.spawn(Self, name="other")


def test_unspawned_actor_has_no_ref() -> None:
    with pytest.raises(RuntimeError, match="not spawned"):
        _ = Echo().ref


async def test_actor_without_receive_fails_the_ask_with_type_error(
    autojump_clock: MockClock,
) -> None:
    class NoReceive(Actor):
        pass

    async with ActorSystem(name="app", max_restarts=5) as system:
        ref = await system.spawn(NoReceive, name="bare")
        with pytest.raises(TypeError, match="NoReceive must implement"):
            await ref.ask("x")


async def test_spawn_accepts_a_factory_callable(autojump_clock: MockClock) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(lambda: Recorder(log, 7), name="r")
        assert await ref.ask("m") == (7, "m")


async def test_factory_that_returns_a_non_actor_fails_spawn_with_actor_start_error(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        with pytest.raises(ActorStartError, match="/app/bad") as info:
            await system.spawn(lambda: object(), name="bad")  # type: ignore[arg-type, return-value]
        assert isinstance(info.value.__cause__, TypeError)
        assert "not an Actor" in str(info.value.__cause__)
        assert system.tree().children == ()


async def test_on_start_failure_fails_spawn_and_frees_the_name(autojump_clock: MockClock) -> None:
    class BadStart(Actor):
        async def on_start(self) -> None:
            raise Crash("no db")

    async with ActorSystem(name="app") as system:
        with pytest.raises(ActorStartError, match="/app/svc") as info:
            await system.spawn(BadStart, name="svc")
        assert isinstance(info.value.__cause__, Crash)
        assert system.tree().children == ()
        ref = await system.spawn(Echo, name="svc")
        assert await ref.ask(1) == 1


async def test_on_start_finishes_before_spawn_returns(autojump_clock: MockClock) -> None:
    started: list[float] = []

    class SlowStart(Actor):
        async def on_start(self) -> None:
            await trio.sleep(2)
            started.append(trio.current_time())

        async def receive(self, message: Any) -> Any:
            return message

    async with ActorSystem(name="app") as system:
        await system.spawn(SlowStart, name="s")
        assert started == [2.0]
        assert trio.current_time() == 2.0


# ---------------------------------------------------------------- tell


async def test_tell_delivers_messages_from_one_sender_in_order(autojump_clock: MockClock) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r")
        for i in range(200):
            await ref.tell(i)
        await ref.ask("sync")
    assert log == [*range(200), "sync"]


async def test_tell_with_room_enqueues_without_a_schedule_point(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r")
        with trio.testing.assert_no_checkpoints():
            await ref.tell(1)
            ref.tell_nowait(2)
        await ref.ask("sync")
    assert log == [1, 2, "sync"]


async def test_actor_handles_one_message_at_a_time_by_default(autojump_clock: MockClock) -> None:
    running = 0
    peak = 0

    class Counting(Actor):
        async def receive(self, message: Any) -> Any:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await trio.sleep(1)
            running -= 1

    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Counting, name="c")
        for i in range(5):
            await ref.tell(i)
        await ref.ask("last")
        assert trio.current_time() == 6.0
    assert peak == 1


async def test_max_concurrency_handles_that_many_messages_at_once(
    autojump_clock: MockClock,
) -> None:
    running = 0
    peak = 0

    class Counting(Actor):
        async def receive(self, message: Any) -> Any:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await trio.sleep(1)
            running -= 1
            return message

    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Counting, name="pool", max_concurrency=3)
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(ref.ask, i)
        assert trio.current_time() == 2.0
    assert peak == 3


async def test_a_pool_adds_workers_only_while_every_worker_is_taken(
    autojump_clock: MockClock,
) -> None:
    # A burst of messages whose handler never waits is drained by the first
    # worker (and at most the one spare it started): the pool grows when no
    # worker is free, not once per message.
    tasks: set[trio.lowlevel.Task] = set()

    class Quick(Actor):
        async def receive(self, message: Any) -> Any:
            tasks.add(trio.lowlevel.current_task())
            return message

    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Quick, name="pool", max_concurrency=10)
        for i in range(50):
            ref.tell_nowait(i)
        assert await ref.ask("last") == "last"
        workers = ref._cell._workers  # the pool's nursery: one task per worker started
        assert workers is not None
        assert len(workers.child_tasks) <= 2
    assert len(tasks) in (1, 2)


async def test_an_ask_that_waited_for_room_times_out_at_its_own_deadline(
    autojump_clock: MockClock,
) -> None:
    # x waits for room from t=0 (deadline 5) and is queued at t=2; y, another
    # ask with the same timeout made at t=1 (deadline 6), got queued first.
    # x still times out at 5, not behind y's later deadline.
    class Sleeper(Actor):
        async def receive(self, message: Any) -> Any:
            await trio.sleep(2 if message != "y" else 10)
            return message

    timed_out_at: list[float] = []

    async def ask_x(ref: ActorRef) -> None:
        with pytest.raises(AskTimeout):
            await ref.ask("x", timeout=5)
        timed_out_at.append(trio.current_time())

    async def ask_y(ref: ActorRef) -> None:
        await trio.sleep(1)
        with pytest.raises(AskTimeout):
            await ref.ask("y", timeout=5)

    async with ActorSystem(name="app") as system:
        a = await system.spawn(Sleeper, name="a", mailbox=MailboxSpec(capacity=1))
        b = await system.spawn(Sleeper, name="b")
        a.tell_nowait("hold")  # handled from t=0 to t=2
        await trio.testing.wait_all_tasks_blocked()
        a.tell_nowait("fill")  # waits: the mailbox is full now
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_x, a)
            nursery.start_soon(ask_y, b)
    assert timed_out_at == [5.0]


# ---------------------------------------------------------------- mailbox policies through a ref


async def test_drop_oldest_mailbox_dead_letters_the_evicted_message(
    autojump_clock: MockClock,
) -> None:
    gate = trio.Event()
    log: list[Any] = []
    spec = MailboxSpec(capacity=2, overflow="drop_oldest")
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(lambda: Gated(gate, log), name="g", mailbox=spec)
        await ref.tell(1)
        await trio.testing.wait_all_tasks_blocked()  # 1 is in hand, not waiting
        for i in (2, 3, 4):
            await ref.tell(i)
        ref.tell_nowait(5)
        assert system.tree().find("g").mailbox_depth == 2
        gate.set()
    assert log == [1, 4, 5]
    letters = list(system.dead_letters)
    assert [(d.message, d.reason, d.recipient) for d in letters] == [
        (2, DeadLetterReason.MAILBOX_FULL, "/app/g"),
        (3, DeadLetterReason.MAILBOX_FULL, "/app/g"),
    ]
    assert all(isinstance(d.exception, MailboxFull) for d in letters)


async def test_drop_newest_mailbox_dead_letters_the_incoming_message(
    autojump_clock: MockClock,
) -> None:
    gate = trio.Event()
    log: list[Any] = []
    spec = MailboxSpec(capacity=2, overflow="drop_newest")
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(lambda: Gated(gate, log), name="g", mailbox=spec)
        await ref.tell(1)
        await trio.testing.wait_all_tasks_blocked()
        for i in (2, 3, 4):
            await ref.tell(i)
        ref.tell_nowait(5)
        gate.set()
    assert log == [1, 2, 3]
    assert [(d.message, d.reason) for d in system.dead_letters] == [
        (4, DeadLetterReason.MAILBOX_FULL),
        (5, DeadLetterReason.MAILBOX_FULL),
    ]


async def test_fail_mailbox_raises_mailbox_full_to_the_sender(autojump_clock: MockClock) -> None:
    gate = trio.Event()
    log: list[Any] = []
    spec = MailboxSpec(capacity=1, overflow="fail")
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(lambda: Gated(gate, log), name="g", mailbox=spec)
        await ref.tell(1)
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell(2)
        with pytest.raises(MailboxFull):
            await ref.tell(3)
        with pytest.raises(MailboxFull):
            ref.tell_nowait(4)
        with pytest.raises(MailboxFull):
            await ref.ask(5)
        gate.set()
    assert log == [1, 2]


async def test_block_mailbox_makes_tell_wait_for_room(autojump_clock: MockClock) -> None:
    log: list[Any] = []
    spec = MailboxSpec(capacity=1)
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r", mailbox=spec)
        await ref.tell(("sleep", 5, "a"))
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell(("sleep", 5, "b"))
        with pytest.raises(MailboxFull):
            ref.tell_nowait("c")
        await ref.tell("c")  # waits until "a" is done and "b" is taken
        assert trio.current_time() == 5.0
        await ref.ask("sync")
    assert log == ["a", "b", "c", "sync"]


async def test_ask_evicted_by_drop_oldest_fails_at_once_with_mailbox_full(
    autojump_clock: MockClock,
) -> None:
    gate = trio.Event()
    spec = MailboxSpec(capacity=1, overflow="drop_oldest")
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(lambda: Gated(gate, []), name="g", mailbox=spec)
        await ref.tell("in hand")
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            errors: list[BaseException] = []

            async def asker() -> None:
                try:
                    await ref.ask("evicted", timeout=60)
                except MailboxFull as exc:
                    errors.append(exc)

            nursery.start_soon(asker)
            await trio.testing.wait_all_tasks_blocked()
            await ref.tell("newer")
        assert len(errors) == 1
        assert trio.current_time() == 0.0
        gate.set()
    assert [(d.message, d.reason) for d in system.dead_letters] == [
        ("evicted", DeadLetterReason.MAILBOX_FULL)
    ]


async def test_ask_dropped_by_drop_newest_fails_at_once_with_mailbox_full(
    autojump_clock: MockClock,
) -> None:
    gate = trio.Event()
    spec = MailboxSpec(capacity=1, overflow="drop_newest")
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(lambda: Gated(gate, []), name="g", mailbox=spec)
        await ref.tell("in hand")
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell("waiting")
        with pytest.raises(MailboxFull):
            await ref.ask("dropped", timeout=60)
        assert trio.current_time() == 0.0
        gate.set()
    assert [(d.message, d.reason) for d in system.dead_letters] == [
        ("dropped", DeadLetterReason.MAILBOX_FULL)
    ]


# ---------------------------------------------------------------- ask


async def test_ask_timeout_names_target_message_type_and_timeout(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Stuck, name="slow")
        with pytest.raises(AskTimeout) as info:
            await ref.ask(Ping(), timeout=2.5)
        assert trio.current_time() == 2.5
    message = str(info.value)
    assert "/app/slow" in message
    assert "Ping" in message
    assert "2.5 s" in message
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, TriobusError)


async def test_ask_timeout_defaults_to_30_seconds(autojump_clock: MockClock) -> None:
    assert DEFAULT_ASK_TIMEOUT == 30.0
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Stuck, name="slow")
        with pytest.raises(AskTimeout):
            await ref.ask("x")
        assert trio.current_time() == 30.0


async def test_ask_without_timeout_waits_for_the_reply(autojump_clock: MockClock) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r")
        assert await ref.ask(("sleep", 1000, "late"), timeout=None) == (1, "late")
        assert trio.current_time() == 1000.0


async def test_many_asks_time_out_each_at_its_own_deadline(autojump_clock: MockClock) -> None:
    expired: dict[float, float] = {}
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Stuck, name="slow", max_concurrency=10)

        async def asker(timeout: float) -> None:
            with pytest.raises(AskTimeout):
                await ref.ask(timeout, timeout=timeout)
            expired[timeout] = trio.current_time()

        async with trio.open_nursery() as nursery:
            for timeout in (5.0, 1.0, 3.0, 2.0):
                nursery.start_soon(asker, timeout)
    assert expired == {1.0: 1.0, 2.0: 2.0, 3.0: 3.0, 5.0: 5.0}


async def test_late_reply_goes_to_dead_letters_and_never_to_a_later_asker(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r")
        with pytest.raises(AskTimeout):
            await ref.ask(("sleep", 10, "first"), timeout=1)
        assert await ref.ask("second", timeout=60) == (1, "second")
        assert trio.current_time() == 10.0
    assert [(d.message, d.reason, d.recipient) for d in system.dead_letters] == [
        (("sleep", 10, "first"), DeadLetterReason.LATE_REPLY, "/app/r")
    ]


async def test_cancelled_asker_abandons_the_reply_to_dead_letters(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r")
        with trio.move_on_after(1):
            await ref.ask(("sleep", 3, "abandoned"))
        assert await ref.ask("next") == (1, "next")
    assert log == ["abandoned", "next"]
    assert [(d.message, d.reason) for d in system.dead_letters] == [
        (("sleep", 3, "abandoned"), DeadLetterReason.LATE_REPLY)
    ]


async def test_ask_timeout_covers_waiting_for_room_in_a_full_mailbox(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Stuck, name="stuck", mailbox=MailboxSpec(capacity=1))
        await ref.tell("in hand")
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell("waiting")
        with trio.fail_after(100), pytest.raises(AskTimeout):
            await ref.ask("third", timeout=1)
        assert trio.current_time() == 1.0


async def test_settled_asks_are_not_kept_behind_a_slow_ask_of_the_same_timeout(
    autojump_clock: MockClock,
) -> None:
    # One ask stays pending while many quick asks with the same timeout come
    # and go: the timer holds about as many entries as asks in flight, not
    # one per ask made since the slow one.
    gate = trio.Event()
    async with ActorSystem(name="app") as system:
        slow = await system.spawn(lambda: Gated(gate, []), name="slow")
        fast = await system.spawn(Echo, name="fast")
        timer = system._runtime.timer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow.ask, "slow")
            await trio.testing.wait_all_tasks_blocked()
            for i in range(10_000):
                assert await fast.ask(i) == i
            assert len(timer) <= 2 * 32 + 1  # it was 10,001
            gate.set()


# ---------------------------------------------------------------- crashes and asks


async def test_ask_whose_receive_raises_gets_that_exception_and_the_actor_restarts(
    autojump_clock: MockClock,
) -> None:
    raised: list[BaseException] = []

    class Fragile(Actor):
        async def receive(self, message: Any) -> Any:
            if message == "boom":
                error = Crash("from receive")
                raised.append(error)
                raise error
            return message

    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Fragile, name="f")
        with pytest.raises(Crash) as info:
            await ref.ask("boom")
        assert info.value is raised[0]
        assert await ref.ask("after") == "after"
        assert system.tree().find("f").restarts == 1
    # A crashing ask answers its asker; it is not a dead letter and is never retried.
    assert len(raised) == 1
    assert list(system.dead_letters) == []


async def test_crashing_tell_is_dead_lettered_with_its_exception(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r")
        await ref.tell("boom")
        assert await ref.ask("after") == (2, "after")
    (letter,) = system.dead_letters
    assert (letter.message, letter.recipient, letter.reason) == (
        "boom",
        "/app/r",
        DeadLetterReason.CRASHED,
    )
    assert isinstance(letter.exception, Crash)


async def test_asks_queued_behind_a_crash_are_answered_after_the_restart(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r")
        replies: list[Any] = []
        async with trio.open_nursery() as nursery:
            await ref.tell(("sleep", 1, "first"))
            await ref.tell("boom")

            async def asker(message: str) -> None:
                replies.append(await ref.ask(message))

            nursery.start_soon(asker, "q1")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(asker, "q2")
        assert sorted(replies) == [(2, "q1"), (2, "q2")]
    assert log == ["first", "q1", "q2"]


async def test_ask_gets_actor_stopped_at_once_when_its_target_crashes_for_good(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r", restart="temporary")
        await ref.tell(("sleep", 1, "first"))
        await ref.tell("boom")
        with pytest.raises(ActorStopped, match="/app/r stopped before it replied") as info:
            await ref.ask("never answered", timeout=60)
        assert trio.current_time() == 1.0
        assert isinstance(info.value.__cause__, Crash)
    assert ("never answered", DeadLetterReason.SHUTDOWN) in [
        (d.message, d.reason) for d in system.dead_letters
    ]


async def test_ask_gets_actor_stopped_when_its_target_is_stopped_before_replying(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Stuck, name="stuck", shutdown=2)
        errors: list[tuple[str, float]] = []

        async def asker(message: str) -> None:
            with pytest.raises(ActorStopped):
                await ref.ask(message, timeout=60)
            errors.append((message, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(asker, "in hand")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(asker, "queued")
            await trio.testing.wait_all_tasks_blocked()
            await ref.stop()
        assert sorted(errors) == [("in hand", 2.0), ("queued", 2.0)]
    assert sorted((d.message, d.reason) for d in system.dead_letters) == [
        ("in hand", DeadLetterReason.SHUTDOWN),
        ("queued", DeadLetterReason.SHUTDOWN),
    ]


async def test_ask_in_hand_gets_actor_stopped_when_its_pool_crashes(
    autojump_clock: MockClock,
) -> None:
    handled: list[Any] = []

    class Pool(Actor):
        async def receive(self, message: Any) -> Any:
            if message == "boom":
                raise Crash("worker 2 failed")
            handled.append(message)
            await trio.sleep(10)
            return "done"

    async with ActorSystem(name="app", max_restarts=5) as system:
        ref = await system.spawn(Pool, name="pool", max_concurrency=2)
        outcome: list[Any] = []

        async def asker() -> None:
            try:
                outcome.append(await ref.ask("slow", timeout=100))
            except ActorStopped as exc:
                outcome.append((exc, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(asker)
            await trio.sleep(1)
            await ref.tell("boom")
        (result,) = outcome
        assert isinstance(result, tuple)
        assert result[1] == 1.0
        assert isinstance(result[0].__cause__, Crash)
        assert handled == ["slow"]


# ---------------------------------------------------------------- stopped actors


async def test_tell_and_ask_to_a_stopped_actor_raise_actor_stopped_and_dead_letter(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Echo, name="gone")
        await ref.stop()
        assert ref.stopped
        with pytest.raises(ActorStopped, match="/app/gone is stopped"):
            await ref.tell("t")
        with pytest.raises(ActorStopped, match="/app/gone is stopped"):
            ref.tell_nowait("tn")
        with pytest.raises(ActorStopped, match="/app/gone is stopped"):
            await ref.ask(Ping())
        assert system.tree().children == ()
    letters = list(system.dead_letters)
    assert [(d.message, d.recipient, d.reason) for d in letters[:2]] == [
        ("t", "/app/gone", DeadLetterReason.STOPPED),
        ("tn", "/app/gone", DeadLetterReason.STOPPED),
    ]
    assert isinstance(letters[2].message, Ping)
    assert letters[2].reason is DeadLetterReason.STOPPED


async def test_stopping_a_stopped_actor_does_nothing(autojump_clock: MockClock) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Echo, name="a")
        await ref.stop()
        await ref.stop()
        assert ref.stopped


async def test_stop_handles_the_backlog_before_the_actor_ends(autojump_clock: MockClock) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(recorder_factory(log), name="r")
        for i in range(3):
            await ref.tell(("sleep", 1, i))
        await ref.stop()
        assert trio.current_time() == 3.0
    assert log == [0, 1, 2]
    assert list(system.dead_letters) == []


async def test_tell_to_a_blocked_full_mailbox_raises_actor_stopped_when_the_actor_stops(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Stuck, name="s", mailbox=MailboxSpec(capacity=1), shutdown=1)
        await ref.tell("in hand")
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell("waiting")
        errors: list[BaseException] = []

        async def sender() -> None:
            try:
                await ref.tell("blocked")
            except ActorStopped as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            await ref.stop()
        assert len(errors) == 1
    assert sorted((d.message, d.reason) for d in system.dead_letters) == [
        ("blocked", DeadLetterReason.STOPPED),
        ("in hand", DeadLetterReason.SHUTDOWN),
        ("waiting", DeadLetterReason.SHUTDOWN),
    ]


# ---------------------------------------------------------------- deadlocks


async def test_an_actor_asking_itself_fails_fast_with_deadlock_error(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Forward, name="a")
        error = await ref.ask([ref])
        assert isinstance(error, DeadlockError)
        assert error.chain == ("/app/a", "/app/a")
        assert "/app/a -> /app/a" in str(error)
        assert trio.current_time() == 0.0


async def test_an_ask_cycle_through_two_actors_fails_fast_naming_the_chain(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        a = await system.spawn(Forward, name="a")
        b = await system.spawn(Forward, name="b")
        error = await a.ask([b, a])
        assert isinstance(error, DeadlockError)
        assert error.chain == ("/app/a", "/app/b", "/app/a")
        assert "/app/a -> /app/b -> /app/a" in str(error)
        assert trio.current_time() == 0.0


async def test_an_ask_cycle_through_three_actors_fails_fast_naming_the_chain(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        a = await system.spawn(Forward, name="a")
        b = await system.spawn(Forward, name="b")
        c = await system.spawn(Forward, name="c")
        error = await a.ask([b, c, b])
        assert isinstance(error, DeadlockError)
        assert error.chain == ("/app/a", "/app/b", "/app/c", "/app/b")
        assert trio.current_time() == 0.0


async def test_an_ask_chain_without_a_cycle_is_answered(autojump_clock: MockClock) -> None:
    async with ActorSystem(name="app") as system:
        a = await system.spawn(Forward, name="a")
        b = await system.spawn(Forward, name="b")
        c = await system.spawn(Forward, name="c")
        assert await a.ask([b, c]) == "end"


async def test_a_reentrant_ask_with_free_capacity_runs(autojump_clock: MockClock) -> None:
    async with ActorSystem(name="app") as system:
        pool = await system.spawn(Forward, name="pool", max_concurrency=2)
        assert await pool.ask([pool]) == "end"


async def test_an_uncaught_deadlock_error_crashes_the_asking_actor(
    autojump_clock: MockClock,
) -> None:
    class Selfish(Actor):
        async def receive(self, message: Any) -> Any:
            return await self.ref.ask("again")

    async with ActorSystem(name="app", max_restarts=3) as system:
        ref = await system.spawn(Selfish, name="s")
        with pytest.raises(DeadlockError):
            await ref.ask("go")
        await trio.testing.wait_all_tasks_blocked()
        assert system.tree().find("s").restarts == 1


# ---------------------------------------------------------------- lifecycle hooks


class Hooks(Actor):
    """Logs every hook with its incarnation number."""

    def __init__(self, log: list[Any], number: int) -> None:
        self.log = log
        self.number = number

    async def on_start(self) -> None:
        self.log.append(("start", self.number))

    async def on_stop(self) -> None:
        self.log.append(("stop", self.number))

    async def on_restart(self, error: BaseException | None) -> None:
        self.log.append(("restart", self.number, error))

    async def receive(self, message: Any) -> Any:
        if isinstance(message, BaseException):
            raise message
        if message == "exit":
            self.stop_self()
            return "bye"
        return self.number


def hooks_factory(log: list[Any]) -> Any:
    count = 0

    def make() -> Hooks:
        nonlocal count
        count += 1
        return Hooks(log, count)

    return make


async def test_restart_runs_on_stop_on_the_old_instance_then_on_restart_and_on_start_on_a_new(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    error = Crash("boom")
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(hooks_factory(log), name="h")
        await ref.tell(error)
        assert await ref.ask("who") == 2
    assert log == [
        ("start", 1),
        ("stop", 1),
        ("restart", 2, error),
        ("start", 2),
        ("stop", 2),
    ]


async def test_stop_self_ends_a_permanent_actor_normally_and_it_restarts_with_none(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(hooks_factory(log), name="h")
        assert await ref.ask("exit") == "bye"
        assert await ref.ask("who") == 2
        assert list(system.dead_letters) == []
    assert log == [("start", 1), ("stop", 1), ("restart", 2, None), ("start", 2), ("stop", 2)]


async def test_stop_self_removes_a_transient_actor_and_dead_letters_its_backlog(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(hooks_factory(log), name="h", restart="transient")
        await ref.tell("exit")
        await ref.tell("left 1")
        await ref.tell("left 2")
        await trio.testing.wait_all_tasks_blocked()
        assert ref.stopped
        assert system.tree().children == ()
        with pytest.raises(ActorStopped):
            await ref.tell("after")
    assert log == [("start", 1), ("stop", 1)]
    assert [(d.message, d.reason) for d in system.dead_letters] == [
        ("left 1", DeadLetterReason.SHUTDOWN),
        ("left 2", DeadLetterReason.SHUTDOWN),
        ("after", DeadLetterReason.STOPPED),
    ]


async def test_on_stop_that_raises_is_logged_and_the_actor_still_restarts(
    autojump_clock: MockClock,
) -> None:
    class BadStop(Actor):
        async def on_stop(self) -> None:
            raise Crash("on_stop bug")

        async def receive(self, message: Any) -> Any:
            if message == "boom":
                raise Crash("boom")
            return message

    async with ActorSystem(name="app") as system:
        ref = await system.spawn(BadStop, name="b")
        await ref.tell("boom")
        assert await ref.ask("ok") == "ok"
        assert system.tree().find("b").state is ChildState.RUNNING


async def test_on_stop_gets_at_most_the_shutdown_deadline(autojump_clock: MockClock) -> None:
    finished: list[float] = []

    class SlowStop(Actor):
        async def on_stop(self) -> None:
            await trio.sleep(100)
            finished.append(trio.current_time())

        async def receive(self, message: Any) -> Any:
            return message

    async with ActorSystem(name="app") as system:
        ref = await system.spawn(SlowStop, name="s", shutdown=3)
        await ref.stop()
        assert trio.current_time() == 3.0
    assert finished == []


async def test_an_actor_ref_is_hashable_and_usable_as_a_key(autojump_clock: MockClock) -> None:
    async with ActorSystem(name="app") as system:
        a = await system.spawn(Echo, name="a")
        b = await system.spawn(Echo, name="b")
        table: dict[ActorRef, int] = {a: 1, b: 2}
        assert table[a] == 1
        assert len({a, a, b}) == 2


async def test_unbounded_mailbox_never_blocks_tell(autojump_clock: MockClock) -> None:
    gate = trio.Event()
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(
            lambda: Gated(gate, log), name="g", mailbox=MailboxSpec(capacity=math.inf)
        )
        for i in range(3000):
            ref.tell_nowait(i)
        gate.set()
    assert log == list(range(3000))


async def test_an_actor_asking_itself_from_on_start_fails_fast(autojump_clock: MockClock) -> None:
    seen: list[BaseException] = []

    class SelfInit(Actor):
        async def on_start(self) -> None:
            try:
                await self.ref.ask("init")
            except Exception as exc:
                seen.append(exc)

        async def receive(self, message: Any) -> Any:
            return message

    async with ActorSystem(name="app") as system:
        await system.spawn(SelfInit, name="s")
        assert trio.current_time() == 0.0
    assert [type(e) for e in seen] == [DeadlockError]


async def test_stop_self_in_a_pool_ends_the_incarnation_once(autojump_clock: MockClock) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(hooks_factory(log), name="pool", max_concurrency=3)
        assert await ref.ask("exit") == "bye"
        assert await ref.ask("who") == 2
        assert system.tree().find("pool").restarts == 1
    assert log == [("start", 1), ("stop", 1), ("restart", 2, None), ("start", 2), ("stop", 2)]


# ---------------------------------------------------------------- KeyboardInterrupt in the loop


def interrupt_once_in_hand(message: object) -> Any:
    """A tracer raising ``KeyboardInterrupt`` in the actor loop just after it took ``message``.

    A SIGINT lands wherever the loop is when trio does not defer it; this
    lands it at the first line the loop runs with ``message`` (or its ask)
    in hand, before the handler starts.
    """
    from triobus.actors._ask import Ask
    from triobus.actors._cell import ActorCell

    loop_code = ActorCell._main.__code__
    fired = False

    def holds(value: object) -> bool:
        return value is message or (type(value) is Ask and value.message is message)

    def local(frame: Any, event: str, arg: object) -> Any:
        nonlocal fired
        if not fired and event == "line" and any(map(holds, frame.f_locals.values())):
            fired = True
            raise KeyboardInterrupt
        return local

    def calls(frame: Any, event: str, arg: object) -> Any:
        return local if frame.f_code is loop_code and not fired else None

    return calls


@pytest.mark.parametrize("asked", [False, True], ids=["tell", "ask"])
async def test_a_keyboard_interrupt_after_taking_a_message_never_loses_it(
    autojump_clock: MockClock, asked: bool
) -> None:
    import sys

    message = Ping()
    handled: list[object] = []

    class Recording(Actor):
        async def receive(self, m: Any) -> Any:
            handled.append(m)
            return m

    async def ask(ref: ActorRef) -> None:
        await ref.ask(message)

    previous = sys.gettrace()
    with pytest.raises(KeyboardInterrupt):
        async with ActorSystem(name="app") as system:
            ref = await system.spawn(Recording, name="r")
            assert await ref.ask("warm up") == "warm up"
            sys.settrace(interrupt_once_in_hand(message))
            try:
                async with trio.open_nursery() as nursery:
                    if asked:
                        nursery.start_soon(ask, ref)
                    else:
                        ref.tell_nowait(message)
                    await trio.sleep_forever()
            finally:
                sys.settrace(previous)
    dead = [letter.message for letter in system.dead_letters]
    assert handled.count(message) + dead.count(message) == 1


class _SlowThenCrash(Actor):
    async def receive(self, message: Any) -> Any:
        await trio.sleep(10)
        if message == "crash":
            raise ValueError("crashed after the asker left")
        return f"reply to {message}"


async def _dead_letters_of_an_ask_that_timed_out(message: str) -> list[DeadLetter]:
    """Ask ``_SlowThenCrash`` with a 1 s timeout, wait until it is done, return its letters."""
    async with ActorSystem("app", max_restarts=5) as system:
        ref = await system.spawn(_SlowThenCrash, name="slow")
        with pytest.raises(AskTimeout):
            await ref.ask(message, timeout=1)
        await trio.sleep(20)
    return [letter for letter in system.dead_letters if letter.message == message]


async def test_a_crash_on_an_ask_whose_asker_timed_out_leaves_a_dead_letter(
    autojump_clock: MockClock,
) -> None:
    letters = await _dead_letters_of_an_ask_that_timed_out("crash")
    assert [letter.reason for letter in letters] == [DeadLetterReason.CRASHED]
    assert isinstance(letters[0].exception, ValueError)


async def test_a_late_replys_dead_letter_records_the_question_and_the_reply(
    autojump_clock: MockClock,
) -> None:
    letters = await _dead_letters_of_an_ask_that_timed_out("question")
    assert [letter.reason for letter in letters] == [DeadLetterReason.LATE_REPLY]
    assert letters[0].context is not None
    assert letters[0].context["reply"] == "reply to question"
