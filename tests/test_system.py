"""The actor system as a whole: entering, leaving, shutdown, cancellation, exceptions."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from triobus import (
    Actor,
    ActorStopped,
    ActorSystem,
    ChildState,
    DeadLetterReason,
    DeadLetters,
    SupervisorGaveUp,
    SystemClosed,
)

MockClock = trio.testing.MockClock


class Crash(Exception):
    """The failure test actors raise on purpose."""


class Worker(Actor):
    """Each message takes ``delay`` seconds; logs what it finished and its hooks."""

    def __init__(self, name: str, log: list[Any], delay: float = 1) -> None:
        self.name = name
        self.log = log
        self.delay = delay

    async def on_start(self) -> None:
        self.log.append(("start", self.name))

    async def on_stop(self) -> None:
        self.log.append(("stop", self.name))

    async def receive(self, message: Any) -> Any:
        if message == "boom":
            raise Crash(self.name)
        await trio.sleep(self.delay)
        self.log.append(("done", self.name, message))
        return message


def worker(name: str, log: list[Any], delay: float = 1) -> Any:
    return lambda: Worker(name, log, delay)


def count_tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(count_tasks(child) for n in task.child_nurseries for child in n.child_tasks)


def all_tasks() -> int:
    return count_tasks(trio.lowlevel.current_root_task())


def dead(system: ActorSystem) -> list[tuple[Any, DeadLetterReason]]:
    return [(d.message, d.reason) for d in system.dead_letters]


# ---------------------------------------------------------------- entering


async def test_spawning_outside_the_async_with_raises_system_closed(
    autojump_clock: MockClock,
) -> None:
    system = ActorSystem(name="app")
    with pytest.raises(SystemClosed, match="'app' is not running"):
        await system.spawn(worker("a", []), name="a")
    async with system:
        await system.spawn(worker("a", []), name="a")
    with pytest.raises(SystemClosed, match="'app' is not running"):
        await system.spawn(worker("b", []), name="b")
    with pytest.raises(SystemClosed):
        await system.spawn_supervisor("sup")


async def test_a_system_is_entered_only_once(autojump_clock: MockClock) -> None:
    system = ActorSystem(name="app")
    async with system:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with system:
            pass


async def test_system_exposes_its_dead_letters_and_name(autojump_clock: MockClock) -> None:
    system = ActorSystem(name="app", dead_letter_capacity=3)
    assert isinstance(system.dead_letters, DeadLetters)
    assert system.dead_letters.capacity == 3
    assert ActorSystem().name == "triobus"
    assert repr(system) == "<ActorSystem 'app' not running>"
    async with system:
        assert repr(system) == "<ActorSystem 'app' running>"
        assert system.tree().state is ChildState.RUNNING
        assert system.tree().path == "/app"


# ---------------------------------------------------------------- leaving normally


async def test_leaving_normally_drains_every_backlog_within_its_deadline(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        a = await system.spawn(worker("a", log), name="a")
        b = await system.spawn(worker("b", log), name="b")
        for i in range(3):
            await a.tell(i)
            await b.tell(i)
        log.clear()
    # Each handles its backlog before it stops; b (started last) stops first.
    assert [e for e in log if e[1] == "a"] == [
        ("done", "a", 0),
        ("done", "a", 1),
        ("done", "a", 2),
        ("stop", "a"),
    ]
    assert [e for e in log if e[1] == "b"] == [
        ("done", "b", 0),
        ("done", "b", 1),
        ("done", "b", 2),
        ("stop", "b"),
    ]
    assert [e for e in log if e[0] == "stop"] == [("stop", "b"), ("stop", "a")]
    assert list(system.dead_letters) == []
    assert trio.current_time() == 3.0
    assert system.tree().state is ChildState.STOPPED


async def test_backlog_beyond_the_shutdown_deadline_becomes_shutdown_dead_letters(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        a = await system.spawn(worker("a", log), name="a", shutdown=2.5)
        for i in range(5):
            await a.tell(i)
    assert [e for e in log if e[0] == "done"] == [("done", "a", 0), ("done", "a", 1)]
    # 2 was in hand at the deadline: it was cancelled, and is a dead letter too.
    assert dead(system) == [
        (2, DeadLetterReason.SHUTDOWN),
        (3, DeadLetterReason.SHUTDOWN),
        (4, DeadLetterReason.SHUTDOWN),
    ]
    assert trio.current_time() == 2.5


async def test_a_crash_while_draining_is_dead_lettered_and_ends_the_drain(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app", max_restarts=0) as system:
        a = await system.spawn(worker("a", log), name="a")
        await a.tell(1)
        await a.tell("boom")
        await a.tell(2)
    # The crash during the final stop does not restart or escalate: the rest of the
    # backlog is a shutdown dead letter.
    assert ("done", "a", 1) in log
    assert dead(system)[0] == ("boom", DeadLetterReason.CRASHED)
    assert dead(system)[1:] == [(2, DeadLetterReason.SHUTDOWN)]


async def test_messages_sent_after_the_system_ended_raise_actor_stopped(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        a = await system.spawn(worker("a", []), name="a")
    with pytest.raises(ActorStopped, match="/app/a is stopped"):
        await a.tell("late")
    with pytest.raises(ActorStopped):
        await a.ask("late ask")
    assert dead(system) == [
        ("late", DeadLetterReason.STOPPED),
        ("late ask", DeadLetterReason.STOPPED),
    ]


# ---------------------------------------------------------------- exceptions from the body


async def test_an_exception_from_the_body_leaves_the_async_with_unchanged(
    autojump_clock: MockClock,
) -> None:
    error = KeyError("from the body")
    with pytest.raises(KeyError) as info:
        async with ActorSystem(name="app") as system:
            a = await system.spawn(worker("a", []), name="a")
            await a.tell(1)
            raise error
    assert info.value is error
    assert type(info.value) is KeyError


async def test_an_exception_group_from_the_body_leaves_unchanged(
    autojump_clock: MockClock,
) -> None:
    group = ExceptionGroup("two", [ValueError(1), KeyError(2)])
    with pytest.raises(ExceptionGroup) as info:
        async with ActorSystem(name="app") as system:
            await system.spawn(worker("a", []), name="a")
            raise group
    assert info.value is group


async def test_an_exception_from_the_body_stops_actors_at_once_and_dead_letters_the_backlog(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    with pytest.raises(KeyError):
        async with ActorSystem(name="app") as system:
            a = await system.spawn(worker("a", log, delay=10), name="a")
            for i in range(3):
                await a.tell(i)
            await trio.sleep(1)
            raise KeyError("stop now")
    assert trio.current_time() == 1.0
    assert log == [("start", "a"), ("stop", "a")]
    assert sorted(dead(system)) == [
        (0, DeadLetterReason.SHUTDOWN),
        (1, DeadLetterReason.SHUTDOWN),
        (2, DeadLetterReason.SHUTDOWN),
    ]
    assert system.tree().state is ChildState.STOPPED


async def test_supervisor_gave_up_leaves_the_async_with_bare(autojump_clock: MockClock) -> None:
    with pytest.raises(SupervisorGaveUp) as info:
        async with ActorSystem(name="app", max_restarts=0) as system:
            a = await system.spawn(worker("a", []), name="a")
            await a.tell("boom")
            await trio.sleep_forever()
    assert type(info.value) is SupervisorGaveUp
    assert isinstance(info.value.__cause__, Crash)


# ---------------------------------------------------------------- cancellation from outside


async def run_system(
    log: list[Any],
    holder: list[ActorSystem],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with ActorSystem(name="app") as system:
        holder.append(system)
        a = await system.spawn(worker("a", log, delay=10), name="a")
        sup = await system.spawn_supervisor("sup")
        b = await sup.spawn(worker("b", log, delay=10), name="b")
        for i in range(3):
            await a.tell(("a", i))
            await b.tell(("b", i))
        task_status.started()
        await trio.sleep_forever()


async def test_cancelling_the_host_nursery_stops_everything_cleanly(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    holder: list[ActorSystem] = []
    before = all_tasks()
    async with trio.open_nursery() as host:
        await host.start(run_system, log, holder)
        assert all_tasks() > before
        await trio.sleep(1)
        host.cancel_scope.cancel()
    # Nothing escaped the host, no task outlived it, and it took no (mock) time.
    assert all_tasks() == before
    assert trio.current_time() == 1.0
    assert sorted(e for e in log if e[0] == "stop") == [("stop", "a"), ("stop", "b")]
    assert [e for e in log if e[0] == "done"] == []


async def test_cancelling_the_host_nursery_dead_letters_what_is_queued(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    holder: list[ActorSystem] = []
    async with trio.open_nursery() as host:
        await host.start(run_system, log, holder)
        await trio.sleep(1)
        host.cancel_scope.cancel()
    (system,) = holder
    assert sorted(map(str, dead(system))) == sorted(
        str(((name, i), DeadLetterReason.SHUTDOWN)) for name in "ab" for i in range(3)
    )
    assert system.tree().state is ChildState.STOPPED


async def test_cancelling_a_scope_around_the_system_stops_it_cleanly(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    before = all_tasks()
    with trio.move_on_after(5) as scope:
        async with ActorSystem(name="app") as system:
            a = await system.spawn(worker("a", log, delay=100), name="a")
            await a.tell(1)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == 5.0
    assert all_tasks() == before
    assert log == [("start", "a"), ("stop", "a")]


async def test_no_task_outlives_the_async_with(autojump_clock: MockClock) -> None:
    before = all_tasks()

    class Asker(Actor):
        async def receive(self, message: Any) -> Any:
            return await message.ask("never answered", timeout=None)

    async with ActorSystem(name="app") as system:
        sup = await system.spawn_supervisor("sup")
        inner = await sup.spawn_supervisor("inner")
        slow = await inner.spawn(worker("slow", [], delay=1000), name="slow", shutdown=1)
        pool = await sup.spawn(worker("pool", [], delay=1000), name="pool", max_concurrency=4)
        asker = await system.spawn(Asker, name="asker", shutdown=1)
        await asker.tell(slow)
        for i in range(6):
            await pool.tell(i)
        await trio.sleep(1)
        assert all_tasks() > before
    assert all_tasks() == before


async def test_cancellation_from_outside_leaves_the_async_with_as_a_bare_cancelled(
    autojump_clock: MockClock,
) -> None:
    seen: list[BaseException] = []
    with trio.move_on_after(5):
        try:
            async with ActorSystem(name="app") as system:
                a = await system.spawn(worker("a", [], delay=100), name="a")
                await a.tell(1)
                await trio.sleep_forever()
        except BaseException as exc:
            seen.append(exc)
            raise
    assert [type(e) for e in seen] == [trio.Cancelled]


async def test_root_giving_up_dead_letters_what_is_queued_with_the_failure(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    with pytest.raises(SupervisorGaveUp) as info:
        async with ActorSystem(name="app", max_restarts=0) as system:
            slow = await system.spawn(worker("slow", log, delay=100), name="slow", shutdown=2)
            for i in range(3):
                await slow.tell(i)
            fragile = await system.spawn(worker("fragile", log), name="fragile")
            await fragile.tell("boom")
            await trio.sleep_forever()
    # The giving-up root first stops its children gracefully, in reverse order.
    assert [e for e in log if e[0] == "stop"] == [("stop", "fragile"), ("stop", "slow")]
    assert trio.current_time() == 2.0
    letters = list(system.dead_letters)
    assert [(d.message, d.reason) for d in letters] == [
        ("boom", DeadLetterReason.CRASHED),
        (0, DeadLetterReason.SHUTDOWN),
        (1, DeadLetterReason.SHUTDOWN),
        (2, DeadLetterReason.SHUTDOWN),
    ]
    assert all(d.exception is info.value for d in letters[1:])
    assert system.tree().state is ChildState.STOPPED


async def test_a_child_that_overstays_its_shutdown_deadline_is_reported(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with ActorSystem(name="app") as system:
        a = await system.spawn(worker("a", [], delay=100), name="a", shutdown=2)
        await a.tell(1)
    assert any(
        r.levelname == "WARNING"
        and "/app/a did not stop within its shutdown deadline of 2 s" in r.getMessage()
        for r in caplog.records
    )


async def test_a_supervisor_shutdown_deadline_bounds_its_whole_subtree(
    autojump_clock: MockClock,
) -> None:
    log: list[Any] = []
    async with ActorSystem(name="app") as system:
        sup = await system.spawn_supervisor("sup", shutdown=3)
        a = await sup.spawn(worker("a", log, delay=100), name="a", shutdown=50)
        await a.tell(1)
        await a.tell(2)
    assert trio.current_time() == 3.0
    assert ("stop", "a") in log
    assert sorted(dead(system)) == [(1, DeadLetterReason.SHUTDOWN), (2, DeadLetterReason.SHUTDOWN)]


# ---------------------------------------------------------------- KeyboardInterrupt, SystemExit


class Interrupting(Actor):
    """Raises ``interrupt`` from its handler, while handling a ``LookupError``."""

    def __init__(self, interrupt: BaseException) -> None:
        self.interrupt = interrupt

    async def receive(self, message: Any) -> Any:
        try:
            raise LookupError("what was being handled")
        except LookupError:
            raise self.interrupt  # noqa: B904 (the context is what the test checks)


def frames_of(error: BaseException) -> list[str]:
    names = []
    tb = error.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit], ids=lambda t: t.__name__)
@pytest.mark.parametrize("depth", [0, 1, 3], ids=lambda d: f"{d}-supervisors-deep")
@pytest.mark.parametrize("workers", [1, 4], ids=lambda n: f"{n}-workers")
async def test_keyboard_interrupt_or_system_exit_from_a_handler_leaves_the_system_bare(
    autojump_clock: MockClock, interrupt: type[BaseException], depth: int, workers: int
) -> None:
    raised = interrupt()
    caught: BaseException | None = None
    try:
        async with ActorSystem(name="app") as system:
            parent: Any = system
            for level in range(depth):
                parent = await parent.spawn_supervisor(f"sup{level}")
                await parent.spawn(lambda: Worker("bystander", []), name="bystander")
            ref = await parent.spawn(
                lambda: Interrupting(raised), name="interrupting", max_concurrency=workers
            )
            await ref.tell("go")
            await trio.sleep_forever()
    except interrupt as exc:  # a plain except clause catches it: no group around it
        caught = exc
    assert caught is raised
    assert "receive" in frames_of(caught)  # the original traceback is kept ...
    assert isinstance(caught.__context__, LookupError)  # ... and so is its context
