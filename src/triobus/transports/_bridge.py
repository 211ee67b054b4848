"""The asyncio bridge: asyncio clients on one loop thread, reached from trio.

No asyncio client runs under ``trio.run``, so the broker endpoints run their
clients on ONE asyncio event loop in ONE dedicated thread, and trio code
reaches it through an :class:`AsyncioBridge`. The crossings between the two
threads are grouped, each side crossing at most once per turn of its own
scheduler. Calls made by trio tasks wait in one list; the first one while
no drain is pending has the loop woken (one ``loop.call_soon_threadsafe``,
made by the bridge's system task in trio's next turn, so after every trio
task of this turn queued its call), and the loop's drain starts every
waiting call as a task. Results come back the same way: the calls that end
in one turn of the loop are handed back together after that turn, and only
a hand-back while no drain is pending wakes trio (one
``TrioToken.run_sync_soon``), whose drain reschedules every waiting caller.
There is no timer: a lone call crosses at once, and concurrent calls share
crossings by themselves.

Nothing in the loop thread touches a trio object except through the trio
token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final, NoReturn, TypeVar, TypeVarTuple, Unpack, final

import attrs
import outcome
import trio

from .._errors import BridgeClosed, WrongThread

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

logger = logging.getLogger("triobus.transports")

#: What a stopped bridge tells its callers.
STOPPED: Final = (
    "the asyncio bridge is stopped; make calls between start() and stop() "
    "(inside open_asyncio_bridge() or shared_asyncio_bridge()), or open a new bridge"
)
NOT_STARTED: Final = (
    "the asyncio bridge is not started; await bridge.start() first, or use "
    "open_asyncio_bridge() or shared_asyncio_bridge()"
)


@final
@attrs.frozen
class BridgeStatistics:
    """A snapshot of one bridge's traffic."""

    #: Calls made so far (each ``run``).
    calls: int
    #: Calls whose result has not been handed back to trio yet.
    in_flight: int
    #: Times trio woke the loop thread (``loop.call_soon_threadsafe``) to start or cancel calls.
    crossings_to_loop: int
    #: Times the loop thread woke trio (``TrioToken.run_sync_soon``) to hand results back.
    crossings_to_trio: int
    #: Whether the bridge takes calls.
    running: bool


@final
class _Call:
    """One ``run``: what to start on the loop, who waits for it, and how it ended."""

    __slots__ = ("args", "cancel_requested", "fn", "raise_cancel", "result", "task", "waiter")

    def __init__(self, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.waiter = trio.lowlevel.current_task()
        #: Set (by the trio thread) once the caller was cancelled.
        self.cancel_requested = False
        #: What raises the caller's cancellation, kept by the abort function.
        self.raise_cancel: Callable[[], NoReturn] | None = None
        #: The asyncio task running the call (touched in the loop thread only).
        self.task: asyncio.Task[Any] | None = None
        #: How the call ended, set once (in the loop thread).
        self.result: outcome.Outcome[Any] | None = None


@final
class AsyncioBridge:
    """One asyncio event loop in one dedicated thread, reached from one trio run.

    :meth:`start` it in a trio run and :meth:`stop` it in the same run (or
    use :func:`open_asyncio_bridge`, or :func:`shared_asyncio_bridge` to
    share one bridge per trio run). :meth:`run` runs a coroutine function on
    the loop and returns its result in trio. A bridge starts once; a
    stopped bridge raises :class:`~triobus.BridgeClosed`.

    If the trio run ends without :meth:`stop`, the loop stops by itself
    (its tasks cancelled) and the thread, a daemon, ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        #: The scope of the system task that wakes the loop (see _trio_side).
        self._trio_side = trio.CancelScope()
        #: Set when calls are queued for the loop and it was not woken yet.
        self._wake_loop = trio.Event()
        self._started = trio.Event()
        self._stopped = trio.Event()
        # Guarded by the lock: the two lists crossing over, whether a drain of
        # each is pending, the calls not handed back yet, and the state.
        self._to_loop: list[_Call] = []
        self._to_trio: list[_Call] = []
        self._loop_drain_pending = False
        self._trio_drain_pending = False
        self._calls: set[_Call] = set()
        #: Calls ended in this turn of the loop, not handed back yet (loop thread only).
        self._done: list[_Call] = []
        self._closed = False
        #: What stopped the loop thread when it crashed.
        self._crash: BaseException | None = None
        # Counters, each written by one thread only.
        self._made = 0
        self._crossings_to_loop = 0
        self._crossings_to_trio = 0

    # ------------------------------------------------------------ life cycle

    @property
    def running(self) -> bool:
        """Whether the bridge takes calls (started, not stopped, its thread alive)."""
        return self._loop is not None and not self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The bridge's asyncio loop, for clients that need it (touch it only from the loop).

        Raises:
            BridgeClosed: the bridge is not started, or stopped.
        """
        if self._loop is None:
            raise BridgeClosed(NOT_STARTED)
        if self._closed:
            raise self._closed_error()
        return self._loop

    async def start(self) -> None:
        """Start the loop thread; return once its loop runs.

        Raises:
            RuntimeError: the bridge was started before (a bridge starts once).
        """
        if self._loop is not None:
            raise RuntimeError("this asyncio bridge was started before; a bridge starts once")
        self._token = trio.lowlevel.current_trio_token()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="triobus-asyncio", daemon=True)
        self._thread.start()
        trio.lowlevel.spawn_system_task(self._wake_loop_each_turn, name="triobus asyncio bridge")
        with trio.CancelScope(shield=True):
            await self._started.wait()

    async def stop(self) -> None:
        """Stop the loop and join its thread (a second call, or one before start, does nothing).

        Every asyncio task still running on the loop is cancelled and waited
        for; async generators and the default executor are shut down, then
        the loop is closed. A trio caller whose call was cancelled this way
        gets :class:`~triobus.BridgeClosed`. Waits until the far-side tasks
        are done, so a task that refuses cancellation holds the stop.
        """
        if self._thread is None:
            return
        self._request_stop()
        self._trio_side.cancel()
        with trio.CancelScope(shield=True):
            await self._stopped.wait()
        self._thread.join()

    async def _wake_loop_each_turn(self) -> None:
        """The trio side's system task: wake the loop once per turn of trio's scheduler.

        A call queued for the loop sets ``_wake_loop``; this task runs in the
        scheduler's next turn, after every trio task runnable in this one
        (each of which may queue a call), and wakes the loop once for them
        all. Trio cancels system tasks when its run ends, and the loop is
        stopped then.
        """
        try:
            with self._trio_side:
                while True:
                    await self._wake_loop.wait()
                    self._wake_loop = trio.Event()
                    self._crossings_to_loop += 1
                    assert self._loop is not None
                    # A closed loop raises: its thread fails every call left.
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(self._start_calls)
        finally:
            self._request_stop()

    def _request_stop(self) -> None:
        """Refuse new calls and ask the loop to stop (the thread then tidies up)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop thread already closed its loop
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _serve(self) -> None:
        """The loop thread: run the loop until stopped, then tidy up and fail what is left."""
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.call_soon(self._to_trio_thread, self._started.set)
            loop.run_forever()
        except BaseException as exc:
            logger.error("the asyncio bridge's loop thread stopped on %r", exc, exc_info=exc)
            with self._lock:
                self._crash = exc
                self._closed = True
        try:
            _close_loop(loop)
        except BaseException as exc:
            logger.error("the asyncio bridge's loop did not close cleanly", exc_info=exc)
        finally:
            asyncio.set_event_loop(None)
            with self._lock:
                self._closed = True
                left = list(self._calls)
            for call in left:
                self._finish(call, outcome.Error(self._closed_error()))
            self._hand_back()
            self._to_trio_thread(self._started.set)
            self._to_trio_thread(self._stopped.set)

    def _closed_error(self) -> BridgeClosed:
        crash = self._crash
        if crash is None:
            return BridgeClosed(STOPPED)
        error = BridgeClosed(
            f"the asyncio bridge's loop thread stopped on {crash!r}; open a new bridge"
        )
        error.__cause__ = crash
        return error

    # ------------------------------------------------------------ calls (trio thread)

    async def run(self, async_fn: Callable[[Unpack[Ts]], Coroutine[Any, Any, T]], *args: *Ts) -> T:
        """Run ``async_fn(*args)`` as an asyncio task on the loop; return its result here.

        What the task raises is raised here, the very same exception object
        (its traceback and ``__cause__`` kept). A cancellation of the caller
        cancels the task on the loop and waits for it to end: when it ends
        cancelled, the caller's ``trio.Cancelled`` is raised; when it
        returned (or raised) anyway, that is returned (or raised), and the
        cancellation arrives at the caller's next checkpoint. No task is
        left running on the loop after its caller is gone.

        Raises:
            BridgeClosed: the bridge is not running, or it stopped while the
                call ran (its task was cancelled by the stop).
            WrongThread: called from outside the trio run that started the bridge.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._token is not trio.lowlevel.current_trio_token():
            if self._token is None:
                raise BridgeClosed(NOT_STARTED)
            raise WrongThread(
                "this asyncio bridge belongs to another trio run; open one in this run "
                "(open_asyncio_bridge() or shared_asyncio_bridge())"
            )
        call = _Call(async_fn, args)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._calls.add(call)
        self._made += 1
        self._send_to_loop(call)

        def abort(raise_cancel: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
            call.raise_cancel = raise_cancel
            call.cancel_requested = True
            self._send_to_loop(call)
            return trio.lowlevel.Abort.FAILED

        await trio.lowlevel.wait_task_rescheduled(abort)
        result = call.result
        assert result is not None
        if (
            call.raise_cancel is not None
            and isinstance(result, outcome.Error)
            and isinstance(result.error, asyncio.CancelledError)
        ):
            call.raise_cancel()
        return result.unwrap()  # type: ignore[no-any-return]

    def _send_to_loop(self, call: _Call) -> None:
        """Queue ``call`` for the loop's next drain; have the loop woken if no drain is pending."""
        with self._lock:
            if self._closed and call.cancel_requested:
                return  # the stop cancels it (or already did)
            self._to_loop.append(call)
            if self._loop_drain_pending:
                return
            self._loop_drain_pending = True
        self._wake_loop.set()

    def _wake_callers(self) -> None:
        """Trio's drain (run by the trio token): reschedule every caller whose call ended."""
        with self._lock:
            done, self._to_trio = self._to_trio, []
            self._trio_drain_pending = False
        for call in done:
            trio.lowlevel.reschedule(call.waiter)

    # ------------------------------------------------------------ calls (loop thread)

    def _start_calls(self) -> None:
        """The loop's drain: start each queued call as a task, or cancel it."""
        with self._lock:
            queued, self._to_loop = self._to_loop, []
            self._loop_drain_pending = False
            closed = self._closed
        for call in queued:
            if call.task is not None:
                call.task.cancel()  # a cancellation of a started call
            elif call.cancel_requested:
                self._finish(call, outcome.Error(asyncio.CancelledError()))
            elif closed:
                self._finish(call, outcome.Error(self._closed_error()))
            else:
                self._start(call)

    def _start(self, call: _Call) -> None:
        assert self._loop is not None
        try:
            call.task = self._loop.create_task(call.fn(*call.args))
        except Exception as exc:
            self._finish(call, outcome.Error(exc))
            return
        call.task.add_done_callback(functools.partial(self._task_done, call))

    def _task_done(self, call: _Call, task: asyncio.Task[Any]) -> None:
        result = outcome.capture(task.result)
        if (
            isinstance(result, outcome.Error)
            and isinstance(result.error, asyncio.CancelledError)
            and not call.cancel_requested
            and self._closed
        ):
            error = self._closed_error()
            if error.__cause__ is None:
                error.__cause__ = result.error
            result = outcome.Error(error)
        self._finish(call, result)

    def _finish(self, call: _Call, result: outcome.Outcome[Any]) -> None:
        """Record ``call``'s outcome (once); the hand-back at the end of this turn takes it."""
        if call.result is not None:
            return
        call.result = result
        self._done.append(call)
        if len(self._done) == 1:
            assert self._loop is not None
            # A closed loop raises: its thread hands back what is left as it ends.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon(self._hand_back)

    def _hand_back(self) -> None:
        """Give trio every call that ended this turn of the loop; wake it if no drain is pending.

        Calls end in the done callbacks of their tasks, all run in one turn
        of the loop; handing them back after that turn (not at each end)
        sends them in one crossing.
        """
        with self._lock:
            done, self._done = self._done, []
            self._calls.difference_update(done)
            self._to_trio.extend(done)
            if self._trio_drain_pending or not self._to_trio:
                return
            self._trio_drain_pending = True
        self._crossings_to_trio += 1
        self._to_trio_thread(self._wake_callers)

    def _to_trio_thread(self, fn: Callable[[], object]) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):  # the run is over: nobody waits
            self._token.run_sync_soon(fn)

    # ------------------------------------------------------------ inspection

    def statistics(self) -> BridgeStatistics:
        """A snapshot of calls made, calls in flight and crossings each way."""
        return BridgeStatistics(
            calls=self._made,
            in_flight=len(self._calls),
            crossings_to_loop=self._crossings_to_loop,
            crossings_to_trio=self._crossings_to_trio,
            running=self.running,
        )

    def __repr__(self) -> str:
        if self._loop is None:
            state = "new"
        elif self._closed:
            state = "stopped"
        else:
            state = "running"
        return f"<AsyncioBridge {state} in_flight={len(self._calls)}>"


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task left on the (stopped) loop, wait for them, shut down, close."""
    try:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


@contextlib.asynccontextmanager
async def open_asyncio_bridge() -> AsyncIterator[AsyncioBridge]:
    """A started bridge of its own, stopped when the block is left."""
    bridge = AsyncioBridge()
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


@final
class _Shared:
    __slots__ = ("bridge", "ready", "users")

    def __init__(self) -> None:
        self.bridge = AsyncioBridge()
        self.users = 0
        self.ready = trio.Event()


_shared: dict[trio.lowlevel.TrioToken, _Shared] = {}


@contextlib.asynccontextmanager
async def shared_asyncio_bridge() -> AsyncIterator[AsyncioBridge]:
    """This trio run's shared bridge: the first user starts it, the last one stops it.

    Every endpoint of one trio run that needs asyncio uses this one bridge,
    so one loop thread serves them all. A user that comes after the shared
    bridge's loop thread crashed gets a new bridge (the users of the crashed
    one get :class:`~triobus.BridgeClosed` from it).

    Raises:
        BridgeClosed: the shared bridge's loop thread crashed while this
            user waited for it to start.
    """
    token = trio.lowlevel.current_trio_token()
    entry = _shared.get(token)
    if entry is None or not entry.bridge.running:
        # None yet, or its loop thread crashed: its users keep it, new users get a new one.
        entry = _shared[token] = _Shared()
    entry.users += 1
    try:
        if entry.users == 1:
            try:
                await entry.bridge.start()
            finally:
                entry.ready.set()
        else:
            with trio.CancelScope(shield=True):
                await entry.ready.wait()
            if not entry.bridge.running:
                raise entry.bridge._closed_error()
        yield entry.bridge
    finally:
        entry.users -= 1
        if entry.users == 0:
            if _shared.get(token) is entry:
                del _shared[token]
            await entry.bridge.stop()


@contextlib.asynccontextmanager
async def client_on_bridge(
    open_client: Callable[[], Coroutine[Any, Any, object]],
    close_client: Callable[[], Coroutine[Any, Any, object]],
) -> AsyncIterator[AsyncioBridge]:
    """This trio run's shared bridge, with a client opened on its loop by ``open_client``
    and closed there by ``close_client`` when the block is left.

    Raises:
        Exception: what ``open_client`` raised (the bridge is left at once).
    """
    async with shared_asyncio_bridge() as bridge:
        await bridge.run(open_client)
        try:
            yield bridge
        finally:
            await bridge.run(close_client)
