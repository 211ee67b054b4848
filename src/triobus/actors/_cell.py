"""The runtime side of an actor: its mailbox, current instance and task.

A cell outlives the incarnations of its actor: the mailbox and the
:class:`ActorRef` stay while the supervisor restarts the behavior.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, final

import outcome
import trio

from .._errors import ActorStartError, DeadlockError, MailboxFull
from .._lifecycle import ChildKind, ChildState, Restart
from .._structured import single_exception
from ..mailbox import Carrier, DeadLetterReason, Mailbox, MailboxSpec
from ._actor import Actor
from ._ask import Ask, Frame, current_frame
from ._ref import ActorRef
from ._runtime import Parent, Runtime

logger = logging.getLogger("triobus.actors")

#: A busy actor yields to the scheduler after this many messages in a row.
FAIRNESS_BUDGET = 256
#: ``on_stop`` gets at most this long when the shutdown deadline is unlimited.
ON_STOP_LIMIT = 5.0


class _Signal(enum.Enum):
    #: Take no new message until a stop follows (a restart round is coming).
    PAUSE = "pause"
    #: Finish the message in hand, keep the backlog (a restart follows).
    STOP_FOR_RESTART = "stop_for_restart"
    #: Handle the backlog, then end (the mailbox is already closed).
    STOP_FINAL = "stop_final"


# Wakes a worker parked on an empty mailbox so it reads the system lane.
_WAKE = object()
# Marks "nothing taken yet" in the loop.
_EMPTY = object()
# Tells the loop that this worker must return.
_STOP = object()
# Stands in for the cancel scope of a pool worker (the pool's task has the scope).
_NO_SCOPE = contextlib.nullcontext()

ActorFactory = Callable[[], Actor]


@final
class ActorCell:
    """One supervised actor: mailbox, address, current instance and task."""

    __slots__ = (
        "_asleep",
        "_attention",
        "_ended",
        "_instance",
        "_nursery",
        "_orphans",
        "_parked",
        "_redeliver",
        "_remove_requested",
        "_resume",
        "_running",
        "_scope",
        "_stop_from",
        "_stop_mode",
        "_worker_count",
        "_workers",
        "factory",
        "incarnation",
        "last_error",
        "mailbox",
        "max_concurrency",
        "name",
        "parent",
        "path",
        "ref",
        "restart",
        "restarts",
        "runtime",
        "shutdown",
        "starter",
        "state",
        "stopping",
    )

    kind = ChildKind.ACTOR

    def __init__(
        self,
        runtime: Runtime,
        parent: Parent,
        name: str,
        path: str,
        factory: ActorFactory,
        mailbox: MailboxSpec,
        max_concurrency: int,
        restart: Restart,
        shutdown: float,
    ) -> None:
        self.runtime = runtime
        self.parent = parent
        self.name = name
        self.path = path
        self.factory = factory
        self.max_concurrency = max_concurrency
        self.restart = restart
        self.shutdown = shutdown
        self.mailbox = Mailbox(mailbox, self._on_drop)
        self.ref = ActorRef(self)
        self.state = ChildState.NEW
        self.restarts = 0
        #: Counts starts, so that a stale exit report can be told apart.
        self.incarnation = 0
        #: Workers whose loop is running (see :meth:`saturated`).
        self._running = 0
        #: Pool workers parked on the empty mailbox, counted by themselves
        #: (the count drops when a woken worker runs, a moment after the
        #: mailbox handed it a message). Tells a worker that takes a message
        #: whether another one is free (see the pool's growth in ``_main``).
        self._parked = 0
        #: True from the moment a supervisor asked this actor to stop.
        self.stopping = False
        self.last_error: BaseException | None = None
        self._instance: Actor | None = None
        self._scope: trio.CancelScope | None = None
        self._ended: trio.Event | None = None
        self._stop_mode: _Signal | None = None
        self._resume: trio.Event | None = None
        self._orphans: list[Ask] | None = None
        #: The task running the start hooks, while they run.
        self.starter: trio.lowlevel.Task | None = None
        #: The instance that asked to end (``Actor.stop_self``), if any.
        self._stop_from: Actor | None = None
        self._remove_requested = False
        self._redeliver: deque[object] | None = None
        self._workers: trio.Nursery | None = None
        self._nursery: trio.Nursery | None = None
        self._asleep = False
        self._worker_count = 1
        #: Set when the loop must look at its rare path before the next message:
        #: a system signal, a stop mode, a stop request or a message to redeliver.
        self._attention = True

    # ------------------------------------------------------------ start

    async def start(self, nursery: trio.Nursery, cause: BaseException | None = None) -> None:
        """Make a fresh instance, run its start hooks here, then run it in ``nursery``.

        ``cause`` is given on a restart: ``on_restart(cause)`` runs first.

        Raises:
            ActorStartError: the factory or a start hook raised (chained).
        """
        restarting = self.state is not ChildState.NEW
        self.state = ChildState.STARTING
        # Started again, so no longer stopping, whether or not the start
        # succeeds: a start that fails is a failure to restart again.
        self.stopping = False
        self.starter = trio.lowlevel.current_task()
        try:
            instance = self.factory()
            if not isinstance(instance, Actor):
                raise TypeError(
                    f"the factory of {self.path} returned {type(instance).__qualname__}, "
                    "not an Actor: pass an Actor subclass or a callable that returns one"
                )
            instance._cell = self
            kind = type(instance)
            # The base hooks do nothing: skip making their coroutines.
            if restarting and kind.on_restart is not Actor.on_restart:
                await instance.on_restart(cause)
            if kind.on_start is not Actor.on_start:
                await instance.on_start()
        except Exception as exc:
            self.state = ChildState.RESTARTING if restarting else ChildState.NEW
            raise ActorStartError(f"actor {self.path} failed to start: {exc!r}") from exc
        finally:
            self.starter = None
        self.mailbox.clear_system()  # signals meant for an earlier incarnation
        self._resume = None
        self._instance = instance
        self.incarnation += 1
        self._stop_mode = None
        self._attention = True
        self.stopping = False
        self._ended = None
        self._nursery = nursery
        self.state = ChildState.RUNNING
        if self._redeliver or len(self.mailbox):
            self._launch()
        else:
            # Dormant until the first message: the next send starts the task.
            self._asleep = True
            self.ref._send_nowait = self._wake_send

    def _launch(self) -> None:
        """Start the incarnation's task (its hooks already ran)."""
        assert self._nursery is not None and self._instance is not None
        self._asleep = False
        self._scope = scope = trio.CancelScope()
        self._nursery.start_soon(self._main, self._instance, scope, name=self.path)

    def _wake_send(self, message: object) -> None:
        """The first send to a dormant actor: enqueue, then start its task."""
        send = self.mailbox.send_nowait
        send(message)
        self.ref._send_nowait = send
        self._launch()

    def _stay_asleep(self) -> None:
        """A dormant incarnation is ending: sends queue for the next one."""
        self.ref._send_nowait = self.mailbox.send_nowait

    # ------------------------------------------------------------ the task

    async def _main(self, instance: Actor, scope: trio.CancelScope | None) -> None:
        """The task of one incarnation; with ``scope=None``, one worker of a pool.

        A single-worker actor runs its whole life in this one coroutine frame
        (an idle actor costs one frame, not two).
        """
        error: BaseException | None = None
        try:
            with _NO_SCOPE if scope is None else scope:
                if scope is not None and self.max_concurrency > 1:
                    # An elastic pool: one worker to begin with, another each
                    # time every worker is busy, up to max_concurrency.
                    async with trio.open_nursery() as workers:
                        self._workers = workers
                        self._worker_count = 1
                        workers.start_soon(self._main, instance, None)
                else:
                    receive = instance.receive
                    mailbox = self.mailbox
                    get_nowait = mailbox.get_nowait
                    get = mailbox.get
                    would_block = trio.WouldBlock
                    frame = Frame(self)
                    current_frame.set(frame)
                    budget = FAIRNESS_BUDGET
                    pool = self.max_concurrency > 1
                    reschedule = trio.lowlevel.reschedule
                    value = outcome.Value
                    # The message in hand, from the moment it is taken until it
                    # is settled (_EMPTY otherwise): whatever interrupts the
                    # loop in between (a KeyboardInterrupt at any bytecode, a
                    # cancellation) finds it here and redelivers or
                    # dead-letters it. The takes themselves are KI-protected
                    # (trio's channel methods, _attend) and hand it over
                    # straight into this local.
                    item: object = _EMPTY
                    self._running += 1
                    try:
                        while True:
                            if not self._attention:
                                try:
                                    item = get_nowait()
                                except would_block:
                                    # Nothing queued: park (one schedule point per idle period).
                                    if pool:
                                        self._parked += 1  # for _grow: drops once it runs again
                                    try:
                                        item = await get()
                                    except trio.EndOfChannel:
                                        break
                                    finally:
                                        if pool:
                                            self._parked -= 1
                                    budget = FAIRNESS_BUDGET
                                    if item is _WAKE:
                                        item = _EMPTY
                                        continue
                                except trio.EndOfChannel:
                                    break
                            else:
                                item = await self._attend(instance)
                                if item is _STOP:
                                    break
                                if item is _EMPTY:
                                    if not self._attention:
                                        continue  # nothing pending now: take or park as usual
                                    try:
                                        item = get_nowait()
                                    except (would_block, trio.EndOfChannel):
                                        break  # a final stop, with the backlog handled
                            if (
                                pool
                                and not self._parked
                                and self._running >= self._worker_count < self.max_concurrency
                            ):
                                # Every worker runs and none waits for the next message: add one.
                                self._grow(instance)
                            if type(item) is Ask:
                                frame.chain = item.chain
                                try:
                                    result = await receive(item.message)
                                except Exception as exc:
                                    finish = frame.finish
                                    if finish is None:
                                        if item.done:  # the asker gave up: keep the crash
                                            self.dead_letter(
                                                item.message, DeadLetterReason.CRASHED, exc
                                            )
                                        else:
                                            item.fail(exc)
                                        item = _EMPTY
                                        raise
                                    # The behavior answers for this failure: the
                                    # asker gets it and the actor goes on.
                                    frame.finish = None
                                    frame.chain = ()
                                    finish.finished(frame, exc)
                                    if item.done:  # the asker gave up: a late reply
                                        self.dead_letter(
                                            item.message, DeadLetterReason.LATE_REPLY, exc
                                        )
                                    else:
                                        item.fail(exc)
                                else:
                                    finish = frame.finish
                                    if finish is not None:
                                        frame.finish = None
                                        try:
                                            finish.finished(frame, None)
                                        except Exception as exc:
                                            item.fail(exc)  # never left waiting
                                            item = _EMPTY
                                            raise
                                    frame.chain = ()
                                    if item.done:
                                        item.reply(result)  # a late reply: a dead letter
                                    elif item.parked:
                                        item.done = True
                                        reschedule(item.task, value(result))
                                    else:
                                        item.reply(result)
                                item = _EMPTY
                            else:
                                try:
                                    await receive(item)
                                except Exception as exc:
                                    finish = frame.finish
                                    if finish is None:
                                        self.dead_letter(item, DeadLetterReason.CRASHED, exc)
                                        item = _EMPTY
                                        raise
                                    # The behavior answers for this failure (its error policy).
                                    frame.finish = None
                                    try:
                                        await finish.failed(frame, exc)
                                    except Exception as crash:
                                        self.dead_letter(item, DeadLetterReason.CRASHED, crash)
                                        item = _EMPTY
                                        raise
                                    item = _EMPTY
                                else:
                                    item = _EMPTY
                                    finish = frame.finish
                                    if finish is not None:
                                        frame.finish = None
                                        finish.finished(frame, None)
                            budget -= 1
                            if not budget:
                                budget = FAIRNESS_BUDGET
                                await trio.lowlevel.checkpoint()
                    except BaseException as exc:
                        if item is not _EMPTY:
                            self._cut_off(frame, item, exc)
                        raise
                    finally:
                        self._running -= 1
        except Exception as exc:
            if scope is None:
                raise  # a pool worker: the pool's task handles it
            error = single_exception(exc)
            self.last_error = error
        finally:
            if scope is not None:
                await self._ended_incarnation(instance, error)

    async def _ended_incarnation(self, instance: Actor, error: BaseException | None) -> None:
        self._workers = None
        if self._stop_from is instance:
            self._stop_from = None
        if self._orphans:
            # Asks cut off mid-handling get ActorStopped (with the crash, if any) at once.
            orphans, self._orphans = self._orphans, None
            reason = DeadLetterReason.SHUTDOWN if error is None else DeadLetterReason.CRASHED
            for ask in orphans:
                self.dead_letter(ask.message, reason, error)
                ask.stopped(error)
        if type(instance).on_stop is not Actor.on_stop:
            await self._on_stop(instance)
        self._scope = None
        if self._ended is not None:
            self._ended.set()
        if not self.stopping:
            self.state = ChildState.RESTARTING
            self.parent.child_exited(self, self.incarnation, error)

    def saturated(self) -> bool:
        """Whether every worker is taken, so a nested ask to this actor would wait.

        A worker is taken while its loop runs and it is not parked on the
        mailbox; a pool that can still grow is never saturated. Nothing is
        counted per message: this reads the mailbox's waiting receivers.
        """
        return self._running >= self.max_concurrency and not self.mailbox.receivers_waiting

    def _grow(self, instance: Actor) -> None:
        if self._workers is not None:
            self._worker_count += 1
            self._workers.start_soon(self._main, instance, None)

    @trio.lowlevel.enable_ki_protection  # a message to redeliver is in hand once popped
    async def _attend(self, instance: Actor) -> object:
        """The loop's rare path: system signals, a stop request, redeliveries.

        Returns ``_STOP`` when this worker must return now, a message to
        handle again first, or ``_EMPTY``. The loop keeps calling this while
        a stop is under way (a final stop drains the backlog first).
        """
        if self.mailbox.system_waiting or self._stop_mode is not None:  # noqa: SIM102
            if await self._serve_signals():
                return _STOP
        if self._stop_from is instance:
            self._wake_idle()
            return _STOP
        if self._redeliver:
            return self._redeliver.popleft()
        self._attention = self._stop_mode is not None
        return _EMPTY

    async def _serve_signals(self) -> bool:
        """Apply waiting system signals; True when this worker must return now.

        While paused, wait here (holding no message) until a stop arrives.
        """
        while True:
            signal = self.mailbox.take_system()
            while signal is not None:
                if self._stop_mode is not _Signal.STOP_FOR_RESTART:
                    assert isinstance(signal, _Signal)
                    self._stop_mode = signal
                signal = self.mailbox.take_system()
            if self._stop_mode is not _Signal.PAUSE:
                return self._stop_mode is _Signal.STOP_FOR_RESTART
            if self._resume is None:
                self._resume = trio.Event()
            await self._resume.wait()

    def _cut_off(self, frame: Frame, item: object, error: BaseException) -> None:
        # The handler of ``item`` was interrupted (cancelled, or a non-Exception):
        # a behavior that took it over finishes it with the error first.
        finish = frame.finish
        if finish is not None:
            frame.finish = None
            finish.finished(frame, error)
        self._interrupted(item)

    def _interrupted(self, item: object) -> None:
        # A handler cancelled by the runtime is not a failure: on a final
        # stop the message is a shutdown dead letter, otherwise it is handled
        # first by the next incarnation.
        if self._stop_mode is _Signal.STOP_FINAL:
            if isinstance(item, Carrier) and item.left_over():
                return  # its owner keeps it for a later delivery
            self._dead_letter_item(item, DeadLetterReason.SHUTDOWN)
        elif type(item) is Ask:
            if self._orphans is None:
                self._orphans = []
            self._orphans.append(item)
        else:
            if self._redeliver is None:
                self._redeliver = deque()
            self._redeliver.appendleft(item)
            self._attention = True

    def _wake_idle(self) -> None:
        for _ in range(self.mailbox.receivers_waiting):  # the idle workers, before they wake
            try:
                self.mailbox.send_nowait(_WAKE)
            except (trio.WouldBlock, trio.ClosedResourceError):
                return

    async def _on_stop(self, instance: Actor) -> None:
        limit = self.shutdown if self.shutdown != float("inf") else ON_STOP_LIMIT
        with trio.CancelScope(shield=True, deadline=trio.current_time() + limit) as scope:
            try:
                await instance.on_stop()
            except Exception:
                logger.exception("on_stop of %s raised", self.path)
        if scope.cancelled_caught:
            logger.warning("on_stop of %s overstayed its %s s deadline", self.path, limit)

    # ------------------------------------------------------------ stop

    async def stop(self, *, final: bool) -> None:
        """Stop the running incarnation; wait for it, at most the shutdown deadline.

        ``final=False`` (a stop for a restart) lets the message in hand finish
        and keeps the backlog. ``final=True`` closes the mailbox, lets the
        backlog be handled within the deadline and dead-letters the rest.
        After the deadline the task is cancelled (and reported). Call only
        from the supervisor that owns this cell.
        """
        self.stopping = True
        if final:
            self.mailbox.close()
        if self._asleep:
            # A dormant incarnation has no task to run its on_stop: run it here.
            self._asleep = False
            self._stay_asleep()
            instance = self._instance
            if instance is not None and type(instance).on_stop is not Actor.on_stop:
                await self._on_stop(instance)
        if self._scope is not None:
            self.state = ChildState.STOPPING
            self.mailbox.post_system(_Signal.STOP_FINAL if final else _Signal.STOP_FOR_RESTART)
            self._attention = True
            self._wake_idle()
            self._release_pause()
            ended = self._ended = trio.Event()
            with trio.move_on_after(self.shutdown):
                await ended.wait()
            if self._scope is not None:
                logger.warning(
                    "%s did not stop within its shutdown deadline of %s s: cancelling it "
                    "(a handler that never reaches a checkpoint cannot be cancelled)",
                    self.path,
                    self.shutdown,
                )
                if final:
                    self._stop_mode = _Signal.STOP_FINAL
                    self._attention = True
                self._scope.cancel()
                await ended.wait()
        if final:
            self.finalize(DeadLetterReason.SHUTDOWN)
        else:
            self.state = ChildState.RESTARTING

    def pause(self) -> None:
        """Let the running incarnation take no new message until it is stopped.

        The message in hand finishes; nothing sent from now on reaches the
        old incarnation, so a restart round that follows is seen by every
        sender at once, and the supervisor still stops its children one at
        a time, in reverse order.
        """
        self.stopping = True
        self._stay_asleep()
        if self._scope is not None and self._stop_mode is None:
            self._stop_mode = _Signal.PAUSE
            self._attention = True
            self._wake_idle()

    def resume(self) -> None:
        """Undo :meth:`pause` when no restart round follows it (the failure was stale)."""
        if self.state is not ChildState.RUNNING or not self.stopping:
            return
        if self._stop_mode is _Signal.PAUSE:
            self._stop_mode = None
            self.stopping = False
            self._release_pause()
        elif self._asleep and self._scope is None:
            self.stopping = False
            if self._redeliver or len(self.mailbox):
                self._launch()
            else:
                self.ref._send_nowait = self._wake_send

    def _release_pause(self) -> None:
        if self._resume is not None:
            self._resume.set()
            self._resume = None

    def request_removal(self) -> None:
        """The actor stops itself for good: handle the backlog, then leave the tree."""
        self._remove_requested = True
        self.mailbox.close()
        self._stop_mode = _Signal.STOP_FINAL
        self._attention = True

    def stop_self(self, instance: Actor) -> None:
        """``instance`` ends itself normally once the message in hand is handled.

        Only the incarnation of ``instance`` ends (it may still be starting).
        """
        self._stop_from = instance
        self._attention = True  # the loop looks before the next message

    @property
    def remove_requested(self) -> bool:
        return self._remove_requested

    def cancel(self) -> None:
        """Cancel the running incarnation at once (a firm stop)."""
        self.stopping = True
        self._stop_mode = _Signal.STOP_FINAL
        self._attention = True
        self._stay_asleep()
        self._release_pause()
        if self._scope is not None:
            self._scope.cancel()

    def finalize(self, reason: DeadLetterReason, cause: BaseException | None = None) -> None:
        """Close the mailbox for good and dead-letter everything left in it.

        Each leftover is recorded (and its asker fails with ``ActorStopped``),
        but logged as one summary line with the count, not one line each.
        """
        self.stopping = True
        self.state = ChildState.STOPPED
        self._stay_asleep()
        self._release_pause()
        left: list[object] = list(self._redeliver) if self._redeliver else []
        self._redeliver = None
        left.extend(self.mailbox.drain())
        letters = self.runtime.dead_letters
        count = 0
        for item in left:
            if item is _WAKE or (isinstance(item, Carrier) and item.left_over()):
                continue
            count += 1
            if type(item) is Ask:
                letters.record(item.message, self.path, reason, cause, log=False)
                item.stopped(cause)
            else:
                letters.record(item, self.path, reason, cause, log=False)
        letters.log_summary(self.path, count, reason)

    # ------------------------------------------------------------ dead letters

    def dead_letter(
        self,
        message: object,
        reason: DeadLetterReason,
        error: BaseException | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.runtime.dead_letters.record(message, self.path, reason, error, context)

    def _dead_letter_item(
        self, item: object, reason: DeadLetterReason, cause: BaseException | None = None
    ) -> None:
        if type(item) is Ask:
            self.dead_letter(item.message, reason, cause)
            item.stopped(cause)
        else:
            self.dead_letter(item, reason, cause)

    def _on_drop(self, item: object, error: MailboxFull) -> None:
        if type(item) is Ask:
            self.dead_letter(item.message, DeadLetterReason.MAILBOX_FULL, error)
            item.fail(error)
        else:
            self.dead_letter(item, DeadLetterReason.MAILBOX_FULL, error)

    def deadlock(self, chain: tuple[ActorCell, ...]) -> DeadlockError:
        paths = [cell.path for cell in chain] + [self.path]
        return DeadlockError(
            f"ask would deadlock: {' -> '.join(paths)}; {self.path} handles "
            f"{self.max_concurrency} message(s) at a time and is waiting on this ask. "
            "Use tell for the call back, or raise max_concurrency",
            paths,
        )

    def __repr__(self) -> str:
        return f"<ActorCell {self.path} {self.state.value}>"
