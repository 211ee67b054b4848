"""The public surface: what is exported, how it presents itself, and what its errors say."""

from __future__ import annotations

import math
import types
from typing import Any

import pytest
import trio
import trio.testing

import triobus
from triobus import (
    Actor,
    ActorNameTaken,
    ActorStartError,
    ActorStopped,
    ActorSystem,
    AskTimeout,
    Backoff,
    DeadLetters,
    DeadlockError,
    MailboxClosed,
    MailboxFull,
    MailboxSpec,
    SupervisorGaveUp,
    SystemClosed,
    TriobusError,
)

MockClock = trio.testing.MockClock

PUBLIC_MODULES = [
    triobus,
    triobus.mailbox,
    triobus.actors,
    triobus.supervision,
    triobus.durability,
    triobus.transports,
]


def public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


# ---------------------------------------------------------------- exports


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_all_covers_every_public_name(module: types.ModuleType) -> None:
    assert sorted(public_names(module)) == sorted(module.__all__)


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_all_has_no_duplicates_and_every_name_resolves(module: types.ModuleType) -> None:
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize(
    "name", [n for n in triobus.__all__ if isinstance(getattr(triobus, n), type)]
)
def test_every_exported_class_reports_module_triobus(name: str) -> None:
    assert getattr(triobus, name).__module__ == "triobus"


def test_every_error_derives_from_triobus_error() -> None:
    errors = [
        getattr(triobus, n)
        for n in triobus.__all__
        if isinstance(getattr(triobus, n), type) and issubclass(getattr(triobus, n), Exception)
    ]
    runtime_errors = {
        TriobusError,
        MailboxFull,
        MailboxClosed,
        ActorStopped,
        AskTimeout,
        DeadlockError,
        ActorNameTaken,
        ActorStartError,
        SupervisorGaveUp,
        SystemClosed,
    }
    assert runtime_errors <= set(errors)
    assert all(issubclass(e, TriobusError) for e in errors)
    assert issubclass(AskTimeout, TimeoutError)
    assert issubclass(ActorNameTaken, ValueError)


def test_version_is_a_string() -> None:
    assert triobus.__version__ == "0.1.0"


# ---------------------------------------------------------------- error messages: mailbox


def test_bad_overflow_policy_names_the_value_and_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown overflow policy 'explode'") as info:
        MailboxSpec(overflow="explode")
    for choice in ("'block'", "'fail'", "'drop_oldest'", "'drop_newest'"):
        assert choice in str(info.value)


@pytest.mark.parametrize("capacity", [0, -1, 2.5, True, "10", math.nan])
def test_bad_capacity_names_capacity_and_the_value(capacity: Any) -> None:
    with pytest.raises(ValueError, match="mailbox capacity must be") as info:
        MailboxSpec(capacity=capacity)
    assert repr(capacity) in str(info.value)


def test_bad_dead_letter_capacity_names_the_value() -> None:
    with pytest.raises(ValueError, match="dead letter capacity must be at least 1, got 0"):
        DeadLetters(capacity=0)


def test_mailbox_full_names_capacity_policy_and_what_to_do() -> None:
    mailbox = triobus.Mailbox(MailboxSpec(capacity=1, overflow="fail"), lambda m, e: None)
    mailbox.put_nowait(1)
    with pytest.raises(MailboxFull) as info:
        mailbox.put_nowait(2)
    assert str(info.value) == (
        "mailbox is full (1 waiting, policy 'fail'): slow down the sender, "
        "raise the capacity, or pick a drop policy"
    )


def test_mailbox_closed_says_the_mailbox_is_closed() -> None:
    mailbox = triobus.Mailbox(MailboxSpec(), lambda m, e: None)
    mailbox.close()
    with pytest.raises(MailboxClosed, match="the mailbox is closed and takes no more messages"):
        mailbox.put_nowait(1)


# ---------------------------------------------------------------- error messages: actors


class Echo(Actor):
    async def receive(self, message: Any) -> Any:
        return message


async def test_duplicate_child_name_names_the_parent_and_the_name(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        await system.spawn(Echo, name="dup")
        with pytest.raises(ActorNameTaken, match="/app already has a child named 'dup'"):
            await system.spawn(Echo, name="dup")
        with pytest.raises(ActorNameTaken, match="/app already has a child named 'dup'"):
            await system.spawn_supervisor("dup")
        sup = await system.spawn_supervisor("sup")
        await sup.spawn(Echo, name="dup")  # names are unique among siblings only
        with pytest.raises(ActorNameTaken, match="/app/sup already has a child named 'dup'"):
            await sup.spawn(Echo, name="dup")


@pytest.mark.parametrize("name", ["", "a/b", 3])
async def test_bad_child_name_names_the_value(autojump_clock: MockClock, name: Any) -> None:
    async with ActorSystem(name="app") as system:
        with pytest.raises(ValueError, match="non-empty string without '/'") as info:
            await system.spawn(Echo, name=name)
        assert repr(name) in str(info.value)
        with pytest.raises(ValueError, match="non-empty string without '/'"):
            await system.spawn_supervisor(name)


def test_bad_system_name_names_the_value() -> None:
    with pytest.raises(ValueError, match="got 'a/b'"):
        ActorSystem(name="a/b")


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
async def test_bad_max_concurrency_names_the_value(autojump_clock: MockClock, value: Any) -> None:
    async with ActorSystem(name="app") as system:
        with pytest.raises(ValueError, match=f"max_concurrency must be .*got {value!r}"):
            await system.spawn(Echo, name="e", max_concurrency=value)


@pytest.mark.parametrize("value", [0, -1.0])
async def test_bad_shutdown_deadline_names_the_value(autojump_clock: MockClock, value: Any) -> None:
    async with ActorSystem(name="app") as system:
        with pytest.raises(ValueError, match=f"shutdown must be a positive .*got {value!r}"):
            await system.spawn(Echo, name="e", shutdown=value)
        with pytest.raises(ValueError, match=f"shutdown must be a positive .*got {value!r}"):
            await system.spawn_supervisor("s", shutdown=value)


async def test_bad_restart_type_names_the_value_and_the_choices(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        with pytest.raises(ValueError, match="unknown restart type 'sometimes'") as info:
            await system.spawn(Echo, name="e", restart="sometimes")
        for choice in ("'permanent'", "'transient'", "'temporary'"):
            assert choice in str(info.value)
        assert system.tree().children == ()


async def test_bad_strategy_names_the_value_and_the_choices(autojump_clock: MockClock) -> None:
    async with ActorSystem(name="app") as system:
        with pytest.raises(ValueError, match="unknown supervision strategy 'one_for_none'") as info:
            await system.spawn_supervisor("s", strategy="one_for_none")
        for choice in ("'one_for_one'", "'one_for_all'", "'rest_for_one'"):
            assert choice in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"max_restarts": -1}, "max_restarts must be a whole number >= 0, got -1"),
        ({"max_restarts": 1.5}, "max_restarts must be a whole number >= 0, got 1.5"),
        ({"within": 0}, "within must be a positive number of seconds, got 0"),
    ],
)
async def test_bad_intensity_names_the_setting_and_value(
    autojump_clock: MockClock, kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValueError) as info:
        ActorSystem(name="app", **kwargs)
    assert str(info.value) == expected
    async with ActorSystem(name="app") as system:
        with pytest.raises(ValueError) as info:
            await system.spawn_supervisor("s", **kwargs)
        assert str(info.value) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"initial": 0}, "backoff initial must be > 0, got 0"),
        ({"factor": -2}, "backoff factor must be > 0, got -2"),
        ({"jitter": -0.1}, "backoff jitter must be >= 0, got -0.1"),
        ({"jitter": 1.0}, "backoff jitter is a fraction below 1, got 1.0"),
        ({"initial": 5, "maximum": 1}, "backoff maximum (1) is below its initial delay (5)"),
    ],
)
def test_bad_backoff_names_the_setting_and_value(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError) as info:
        Backoff(**kwargs)
    assert str(info.value) == expected


@pytest.mark.parametrize("timeout", [0, -1])
async def test_bad_ask_timeout_names_the_value(autojump_clock: MockClock, timeout: float) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Echo, name="e")
        with pytest.raises(ValueError, match=f"ask timeout must be a positive .*got {timeout!r}"):
            await ref.ask("x", timeout=timeout)


class Order:
    pass


async def test_actor_stopped_names_the_actor_and_the_message_type(
    autojump_clock: MockClock,
) -> None:
    async with ActorSystem(name="app") as system:
        ref = await system.spawn(Echo, name="orders")
        await ref.stop()
        with pytest.raises(ActorStopped) as info:
            await ref.tell(Order())
    assert str(info.value) == (
        "/app/orders is stopped and takes no messages; the Order is in dead letters"
    )


async def test_actor_start_error_names_the_actor(autojump_clock: MockClock) -> None:
    class Broken(Actor):
        async def on_start(self) -> None:
            raise OSError("port in use")

    async with ActorSystem(name="app") as system:
        with pytest.raises(ActorStartError) as info:
            await system.spawn(Broken, name="server")
    assert str(info.value) == "actor /app/server failed to start: OSError('port in use')"


async def test_deadlock_error_names_the_chain_and_the_way_out(autojump_clock: MockClock) -> None:
    class Selfish(Actor):
        async def receive(self, message: Any) -> Any:
            try:
                await self.ref.ask("again")
            except DeadlockError as exc:
                return exc

    async with ActorSystem(name="app") as system:
        error = await (await system.spawn(Selfish, name="s")).ask("go")
    assert str(error) == (
        "ask would deadlock: /app/s -> /app/s; /app/s handles 1 message(s) at a time and is "
        "waiting on this ask. Use tell for the call back, or raise max_concurrency"
    )


async def test_supervisor_gave_up_names_the_supervisor_and_its_intensity(
    autojump_clock: MockClock,
) -> None:
    class Failing(Actor):
        async def receive(self, message: Any) -> Any:
            raise RuntimeError("x")

    with pytest.raises(SupervisorGaveUp) as info:
        async with ActorSystem(name="app", max_restarts=0, within=3) as system:
            await (await system.spawn(Failing, name="f")).tell(1)
            await trio.sleep_forever()
    assert str(info.value).startswith(
        "supervisor /app gave up: more than 0 restart(s) within 3 s; the last failure is the cause"
    )


async def test_system_closed_names_the_system(autojump_clock: MockClock) -> None:
    with pytest.raises(SystemClosed) as info:
        await ActorSystem(name="billing").spawn(Echo, name="e")
    assert str(info.value) == (
        "actor system 'billing' is not running: use 'async with ActorSystem(...)'"
    )
