"""Supervisors: restart children by Erlang/OTP rules.

A supervisor runs in its own task with its own nursery, in which its
children's tasks run. Children report their end to it; it applies its
strategy, its restart intensity and its backoff one report at a time. A
supervisor that gives up stops its children and fails, which to its own
parent is just a failed child.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol, final

import trio

from .._errors import ActorNameTaken, ActorStartError, SupervisorGaveUp, SystemClosed
from .._lifecycle import ChildKind, ChildState, Restart
from .._structured import single_exception
from ..actors import Actor, ActorCell, ActorFactory, ActorRef, Parent, Runtime
from ..mailbox import DeadLetterReason, MailboxSpec
from ._spec import DEFAULT_SHUTDOWN, Backoff, ChildSpec, Strategy, SupervisorSpec
from ._tree import TreeNode

logger = logging.getLogger("triobus.supervision")


class Child(Protocol):
    """What a supervisor needs of a child, actor or supervisor."""

    name: str
    path: str
    restart: Restart
    restarts: int
    incarnation: int
    state: ChildState
    stopping: bool

    @property
    def kind(self) -> ChildKind: ...

    @property
    def remove_requested(self) -> bool: ...

    async def start(self, nursery: trio.Nursery, cause: BaseException | None = None) -> None: ...

    async def stop(self, *, final: bool) -> None: ...

    def cancel(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def finalize(self, reason: DeadLetterReason, cause: BaseException | None = None) -> None: ...


class _Event(enum.Enum):
    EXIT = "exit"
    STOP = "stop"


@final
class SupervisorCell:
    """The runtime side of a supervisor."""

    kind = ChildKind.SUPERVISOR

    def __init__(
        self,
        runtime: Runtime,
        parent: Parent,
        name: str,
        path: str,
        *,
        strategy: Strategy,
        max_restarts: int,
        within: float,
        backoff: Backoff | None,
        restart: Restart,
        shutdown: float,
    ) -> None:
        self.runtime = runtime
        self.parent = parent
        self.name = name
        self.path = path
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.within = within
        self.backoff = backoff
        self.restart = restart
        self.shutdown = shutdown
        self.children: list[Child] = []
        self._names: set[str] = set()
        #: Bystanders paused for a failure report not handled yet.
        self._paused: dict[tuple[int, int], list[Child]] = {}
        self.state = ChildState.NEW
        self.restarts = 0
        self.incarnation = 0
        self.stopping = False
        self.ref = SupervisorRef(self)
        self._restart_times: deque[float] = deque()
        self._streak = 0
        self._last_failure = -math.inf
        self._lock = trio.Lock()
        self._events_send, self._events_recv = trio.open_memory_channel[
            tuple[_Event, Any, int, BaseException | None, float]
        ](math.inf)
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._wait_scope: trio.CancelScope | None = None
        self._ended: trio.Event | None = None

    # ------------------------------------------------------------ start

    async def start(self, nursery: trio.Nursery, cause: BaseException | None = None) -> None:
        """Start this supervisor and, in order, its children (synchronously).

        Raises:
            ActorStartError: a child failed to start; those already started
                were stopped in reverse order.
        """
        restarting = self.state is not ChildState.NEW
        self.state = ChildState.STARTING
        self._restart_times.clear()
        self._streak = 0
        self.stopping = False
        self._ended = None
        try:
            await nursery.start(self._main, cause if restarting else None, name=self.path)
        except BaseException:
            self.state = ChildState.RESTARTING if restarting else ChildState.NEW
            raise

    async def _main(
        self,
        cause: BaseException | None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._drop_stale_events()
        scope = self._scope = trio.CancelScope()
        self.incarnation += 1
        incarnation = self.incarnation
        started = False
        error: BaseException | None = None
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self._start_children(nursery, cause)
                    self.state = ChildState.RUNNING
                    started = True
                    task_status.started()
                    await self._supervise()
                    nursery.cancel_scope.cancel()
        except Exception as exc:
            error = single_exception(exc)
            if not started:
                # Out of our nursery's group, keeping what caused it (the child's error).
                raise error from error.__cause__
        finally:
            self._nursery = None
            self._scope = None
            if self._ended is not None:
                self._ended.set()
        if not self.stopping:
            self.state = ChildState.RESTARTING
            self.parent.child_exited(self, incarnation, error)

    def _drop_stale_events(self) -> None:
        # What is still queued was meant for an earlier incarnation: a stop
        # posted while it gave up, exits of children it has since restarted.
        while True:
            try:
                self._events_recv.receive_nowait()
            except trio.WouldBlock:
                break
        self._paused.clear()

    async def _start_children(self, nursery: trio.Nursery, cause: BaseException | None) -> None:
        started: list[Child] = []
        for child in list(self.children):
            try:
                await child.start(nursery, cause)
            except Exception as exc:
                for done in reversed(started):
                    await done.stop(final=False)
                raise ActorStartError(
                    f"supervisor {self.path} failed to start {child.path}"
                ) from exc
            started.append(child)

    async def _supervise(self) -> None:
        async for event, child, incarnation, error, failed_at in self._events_recv:
            if event is _Event.STOP:
                await self._stop_children(final=bool(child))
                return
            async with self._lock:
                await self._handle_exit(child, incarnation, error, failed_at)

    # ------------------------------------------------------------ failures

    def child_exited(self, child: object, incarnation: int, error: BaseException | None) -> None:
        # A failure counts at the time it happened, not when it is handled.
        self._events_send.send_nowait((_Event.EXIT, child, incarnation, error, trio.current_time()))
        if self.strategy is not Strategy.ONE_FOR_ONE and child in self.children:
            # Pause the bystanders now, before any other task runs: a message
            # sent after the failure never reaches an old incarnation.
            assert isinstance(child, ActorCell | SupervisorCell)
            if self._will_restart(child, incarnation, error):
                paused = [b for b in self._group(child) if b is not child]
                for bystander in paused:
                    bystander.pause()
                self._paused[id(child), incarnation] = paused

    def _resume(self, paused: list[Child]) -> None:
        if not self.stopping:
            for bystander in paused:
                if bystander in self.children:
                    bystander.resume()

    def _will_restart(self, child: Child, incarnation: int, error: BaseException | None) -> bool:
        if child not in self.children or child.incarnation != incarnation or child.stopping:
            return False
        if child.remove_requested:
            return False
        return child.restart is Restart.PERMANENT or (
            child.restart is Restart.TRANSIENT and error is not None
        )

    def _group(self, failed: Child) -> list[Child]:
        """The children a restart round for ``failed`` touches, in start order."""
        if self.strategy is Strategy.ONE_FOR_ONE:
            return [failed]
        if self.strategy is Strategy.ONE_FOR_ALL:
            return list(self.children)
        return self.children[self.children.index(failed) :]

    @property
    def remove_requested(self) -> bool:
        return False

    def pause(self) -> None:
        """Pause every actor below (see :meth:`ActorCell.pause`)."""
        self.stopping = True
        for child in self.children:
            child.pause()

    def resume(self) -> None:
        """Undo :meth:`pause` when no restart round follows it."""
        if self.stopping and self._scope is not None:
            self.stopping = False
            for child in self.children:
                child.resume()

    async def _handle_exit(
        self, child: Child, incarnation: int, error: BaseException | None, failed_at: float
    ) -> None:
        paused = self._paused.pop((id(child), incarnation), [])
        if child not in self.children or child.incarnation != incarnation or child.stopping:
            # A stale report: the child was stopped, removed or restarted
            # meanwhile. No round follows, so its bystanders take messages again.
            self._resume(paused)
            return
        if error is not None:
            logger.warning("%s failed: %r", child.path, error)
        if not self._will_restart(child, incarnation, error):
            self._resume(paused)
            self._forget(child)
            child.finalize(DeadLetterReason.SHUTDOWN, error)
            return
        if not self._allow_restart(failed_at):
            await self._give_up(error)
        targets = await self._stop_for_strategy(child)
        await self._wait_backoff(failed_at)
        if self.stopping:
            return  # stopped during the backoff: no restart; the stop finalizes them
        assert self._nursery is not None
        for target in targets:
            target.restarts += 1
            try:
                await target.start(self._nursery, error)
            except Exception as exc:
                # A restart that fails is a failure of its own: it is retried
                # by a round of its own, which counts again. As in OTP, the
                # children after it are not started before that round, and
                # the ones started already pause now, as for any failure.
                logger.warning("restart of %s failed: %r", target.path, exc)
                self.child_exited(target, target.incarnation, exc)
                return

    def _allow_restart(self, now: float) -> bool:
        times = self._restart_times
        while times and now - times[0] > self.within:
            times.popleft()
        times.append(now)
        return len(times) <= self.max_restarts

    async def _stop_for_strategy(self, failed: Child) -> list[Child]:
        """Stop the bystanders the strategy names; return who to restart, in order."""
        group = self._group(failed)
        for bystander in reversed(group):
            if bystander is failed:
                continue
            if bystander.restart is Restart.TEMPORARY:
                await bystander.stop(final=True)
                self._forget(bystander)
            else:
                await bystander.stop(final=False)
        return [c for c in group if c in self.children]

    async def _wait_backoff(self, now: float) -> None:
        if self.backoff is None or self.stopping:
            return
        if now - self._last_failure >= self.backoff.reset_after:
            self._streak = 0
        self._last_failure = now
        delay = self.backoff.delay(self._streak, self.runtime.random)
        self._streak += 1
        with trio.CancelScope() as self._wait_scope:
            await trio.sleep(delay)
        self._wait_scope = None

    async def _give_up(self, error: BaseException | None) -> None:
        self.state = ChildState.STOPPING
        logger.error(
            "supervisor %s gives up: more than %d restart(s) within %s s",
            self.path,
            self.max_restarts,
            self.within,
        )
        await self._stop_children(final=False)
        raise SupervisorGaveUp(
            f"supervisor {self.path} gave up: more than {self.max_restarts} restart(s) "
            f"within {self.within} s; the last failure is the cause. Raise max_restarts or "
            "fix the failing child",
            self.path,
        ) from error

    # ------------------------------------------------------------ stop

    async def _stop_children(self, *, final: bool) -> None:
        for child in reversed(list(self.children)):
            await child.stop(final=final)
        if final:
            self._forget_all()

    async def stop(self, *, final: bool) -> None:
        """Stop the children in reverse order, then this supervisor."""
        self.stopping = True
        if self._scope is not None:
            self.state = ChildState.STOPPING
            ended = self._ended = trio.Event()
            self._events_send.send_nowait((_Event.STOP, final, 0, None, 0.0))
            if self._wait_scope is not None:
                self._wait_scope.cancel()
            with trio.move_on_after(self.shutdown):
                await ended.wait()
            if self._scope is not None:
                logger.warning(
                    "supervisor %s did not stop within %s s: cancelling it",
                    self.path,
                    self.shutdown,
                )
                self._scope.cancel()
                await ended.wait()
        if final:
            self.finalize(DeadLetterReason.SHUTDOWN)
        else:
            self.state = ChildState.RESTARTING

    def cancel(self) -> None:
        self.stopping = True
        for child in self.children:
            child.cancel()
        if self._scope is not None:
            self._scope.cancel()

    def finalize(self, reason: DeadLetterReason, cause: BaseException | None = None) -> None:
        """Close every mailbox below for good, dead-lettering what is left."""
        self.stopping = True
        self.state = ChildState.STOPPED
        for child in self.children:
            child.finalize(reason, cause)
        self._forget_all()

    async def remove_child(self, child: object) -> None:
        async with self._lock:
            if child in self.children:
                assert isinstance(child, ActorCell | SupervisorCell)
                await child.stop(final=True)
                if child in self.children:
                    self._forget(child)

    # ------------------------------------------------------------ spawn

    def _forget(self, child: Child) -> None:
        self.children.remove(child)
        self._names.discard(child.name)

    def _forget_all(self) -> None:
        self.children.clear()
        self._names.clear()

    async def add_child(self, name: str, make: Callable[[], Child]) -> Child:
        # Spawning holds the supervisor's lock, so no restart round runs
        # meanwhile; uncontended, it is taken without a schedule point.
        if self._lock.locked():
            async with self._lock:
                return await self._add_child(name, make)
        self._lock.acquire_nowait()
        try:
            return await self._add_child(name, make)
        finally:
            self._lock.release()

    async def _add_child(self, name: str, make: Callable[[], Child]) -> Child:
        if self._nursery is None or self.stopping:
            raise SystemClosed(f"supervisor {self.path} is not running: it takes no children")
        if name in self._names:
            raise ActorNameTaken(
                f"{self.path} already has a child named {name!r}: pick another name"
            )
        child = make()
        self.children.append(child)
        self._names.add(name)
        try:
            await child.start(self._nursery)
        except BaseException:
            self._forget(child)
            child.finalize(DeadLetterReason.SHUTDOWN)
            raise
        return child

    def snapshot(self) -> TreeNode:
        return TreeNode(
            name=self.name,
            path=self.path,
            kind=self.kind,
            state=self.state,
            restarts=self.restarts,
            mailbox_depth=None,
            children=tuple(_snapshot(child) for child in self.children),
        )


def _snapshot(child: Child) -> TreeNode:
    if isinstance(child, SupervisorCell):
        return child.snapshot()
    assert isinstance(child, ActorCell)
    return TreeNode(
        name=child.name,
        path=child.path,
        kind=child.kind,
        state=child.state,
        restarts=child.restarts,
        mailbox_depth=len(child.mailbox),
    )


def _make_child(sup: SupervisorCell, spec: ChildSpec | SupervisorSpec) -> Child:
    """The cell of ``spec`` under ``sup`` (not started), with its own children if any."""
    path = f"{sup.path}/{spec.name}"
    if isinstance(spec, ChildSpec):
        return ActorCell(
            sup.runtime,
            sup,
            spec.name,
            path,
            spec.factory,
            spec.mailbox,
            spec.max_concurrency,
            spec.restart,
            spec.shutdown,
        )
    cell = SupervisorCell(
        sup.runtime,
        sup,
        spec.name,
        path,
        strategy=spec.strategy,
        max_restarts=spec.max_restarts,
        within=spec.within,
        backoff=spec.backoff,
        restart=spec.restart,
        shutdown=spec.shutdown,
    )
    for child in spec.children:
        cell.children.append(_make_child(cell, child))
        cell._names.add(child.name)
    return cell


@final
class SupervisorRef:
    """The handle of a supervisor: spawn children under it, stop it, look at it."""

    __slots__ = ("_cell",)

    def __init__(self, cell: SupervisorCell) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def strategy(self) -> Strategy:
        return self._cell.strategy

    async def spawn(
        self,
        factory: ActorFactory | type[Actor],
        *,
        name: str,
        mailbox: MailboxSpec | None = None,
        max_concurrency: int = 1,
        restart: Restart | str = Restart.PERMANENT,
        shutdown: float = DEFAULT_SHUTDOWN,
    ) -> ActorRef:
        """Start an actor under this supervisor, after its current children.

        ``factory`` makes a fresh :class:`Actor` for every incarnation. The
        actor's ``on_start`` has finished when this returns.

        Raises:
            ActorNameTaken: a sibling already has ``name``.
            ActorStartError: the factory or ``on_start`` raised (chained).
            SystemClosed: the supervisor is not running.
            ValueError: a bad argument (the message says which).
        """
        spec = ChildSpec(
            name,
            factory,
            restart=restart,
            shutdown=shutdown,
            mailbox=mailbox,
            max_concurrency=max_concurrency,
        )
        child = await self._cell.add_child(spec.name, lambda: _make_child(self._cell, spec))
        assert isinstance(child, ActorCell)
        return child.ref

    async def spawn_supervisor(
        self,
        name: str,
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 1,
        within: float = 5.0,
        backoff: Backoff | None = None,
        restart: Restart | str = Restart.PERMANENT,
        shutdown: float = math.inf,
        children: Iterable[ChildSpec | SupervisorSpec] = (),
    ) -> SupervisorRef:
        """Start a child supervisor under this one, with its ``children`` (OTP's start).

        The children (:class:`ChildSpec` for actors, :class:`SupervisorSpec`
        for supervisors, each with its own children) start in order, each
        one's ``on_start`` finished before the next starts and before this
        returns. If one fails to start, those already started are stopped in
        reverse order, the new supervisor is removed, and the spawn fails.

        Defaults are OTP's: at most 1 restart within 5 seconds, else the
        new supervisor gives up and this one decides.

        Raises:
            ActorNameTaken: a sibling already has ``name``, or two children
                share a name.
            ActorStartError: a child failed to start (chained to its error).
            SystemClosed: this supervisor is not running.
            ValueError: a bad argument (the message says which).
        """
        spec = SupervisorSpec(
            name,
            children=children,
            strategy=strategy,
            max_restarts=max_restarts,
            within=within,
            backoff=backoff,
            restart=restart,
            shutdown=shutdown,
        )
        child = await self._cell.add_child(spec.name, lambda: _make_child(self._cell, spec))
        assert isinstance(child, SupervisorCell)
        return child.ref

    async def stop(self) -> None:
        """Stop this supervisor and everything under it for good."""
        await self._cell.parent.remove_child(self._cell)

    def cancel(self) -> None:
        """Cancel everything under this supervisor at once (a firm stop).

        Handlers running under it are cancelled and take no new message;
        :meth:`stop` then finishes the stop and dead-letters what is queued.
        """
        self._cell.cancel()

    def tree(self) -> TreeNode:
        """A snapshot of this supervisor and everything under it."""
        return self._cell.snapshot()

    def __repr__(self) -> str:
        return f"<SupervisorRef {self.path} {self._cell.strategy.value}>"
