"""The mailbox layer: a bounded trio channel, a system lane, overflow policies, dead letters."""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing

from triobus import (
    DeadLetter,
    DeadLetterReason,
    DeadLetters,
    Mailbox,
    MailboxClosed,
    MailboxFull,
    MailboxSpec,
    MailboxStatistics,
    Overflow,
)
from triobus.mailbox import DEFAULT_DEAD_LETTER_CAPACITY, DEFAULT_MAILBOX_CAPACITY


class DropLog:
    """An ``on_drop`` handler that remembers what the policy threw out."""

    def __init__(self) -> None:
        self.dropped: list[object] = []
        self.errors: list[MailboxFull] = []

    def __call__(self, message: object, error: MailboxFull) -> None:
        self.dropped.append(message)
        self.errors.append(error)


def make_mailbox(
    capacity: float = 2, overflow: Overflow | str = "block"
) -> tuple[Mailbox, DropLog]:
    drops = DropLog()
    return Mailbox(MailboxSpec(capacity=capacity, overflow=overflow), drops), drops


def take_all(mailbox: Mailbox) -> list[object]:
    taken: list[object] = []
    while True:
        try:
            taken.append(mailbox.get_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return taken


# ---------------------------------------------------------------- spec


def test_mailbox_spec_defaults_to_1000_messages_with_backpressure() -> None:
    spec = MailboxSpec()
    assert spec.capacity == DEFAULT_MAILBOX_CAPACITY == 1000
    assert spec.overflow is Overflow.BLOCK


@pytest.mark.parametrize("policy", ["block", "fail", "drop_oldest", "drop_newest"])
def test_mailbox_spec_converts_policy_names_to_overflow_members(policy: str) -> None:
    assert MailboxSpec(overflow=policy).overflow is Overflow(policy)


def test_mailbox_spec_accepts_unbounded_capacity() -> None:
    mailbox, _ = make_mailbox(capacity=math.inf, overflow="fail")
    for i in range(5000):
        mailbox.put_nowait(i)
    assert len(mailbox) == 5000


def test_mailbox_spec_is_frozen() -> None:
    spec = MailboxSpec()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.capacity = 5  # type: ignore[misc]


# ---------------------------------------------------------------- user lane


def test_put_nowait_keeps_messages_in_fifo_order() -> None:
    mailbox, _ = make_mailbox(capacity=10)
    for i in range(10):
        mailbox.put_nowait(i)
    assert take_all(mailbox) == list(range(10))


def test_get_nowait_on_an_empty_mailbox_raises_would_block() -> None:
    mailbox, _ = make_mailbox()
    with pytest.raises(trio.WouldBlock):
        mailbox.get_nowait()


def test_len_counts_waiting_messages() -> None:
    mailbox, _ = make_mailbox(capacity=5)
    assert len(mailbox) == 0
    mailbox.put_nowait("a")
    mailbox.put_nowait("b")
    assert len(mailbox) == 2
    mailbox.get_nowait()
    assert len(mailbox) == 1


def test_block_policy_put_nowait_on_a_full_mailbox_raises_mailbox_full() -> None:
    mailbox, drops = make_mailbox(capacity=2, overflow="block")
    mailbox.put_nowait(1)
    mailbox.put_nowait(2)
    with pytest.raises(MailboxFull, match="policy 'block'"):
        mailbox.put_nowait(3)
    assert take_all(mailbox) == [1, 2]
    assert drops.dropped == []
    assert mailbox.dropped == 0


async def test_block_policy_put_waits_for_room(autojump_clock: trio.testing.MockClock) -> None:
    mailbox, drops = make_mailbox(capacity=1, overflow="block")
    await mailbox.put(1)
    done: list[float] = []

    async def sender() -> None:
        await mailbox.put(2)
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        assert len(mailbox) == 1
        await trio.sleep(3)
        assert done == []
        assert mailbox.get_nowait() == 1
    assert done == [3.0]
    assert take_all(mailbox) == [2]
    assert drops.dropped == []


async def test_put_with_room_enqueues_without_a_schedule_point() -> None:
    mailbox, _ = make_mailbox(capacity=3)
    with trio.testing.assert_no_checkpoints():
        await mailbox.put("x")
    assert take_all(mailbox) == ["x"]


async def test_fail_policy_put_raises_mailbox_full_and_keeps_the_backlog() -> None:
    mailbox, drops = make_mailbox(capacity=2, overflow="fail")
    await mailbox.put(1)
    await mailbox.put(2)
    with pytest.raises(MailboxFull, match="policy 'fail'"):
        await mailbox.put(3)
    with pytest.raises(MailboxFull, match="policy 'fail'"):
        mailbox.put_nowait(4)
    assert take_all(mailbox) == [1, 2]
    assert drops.dropped == []
    assert mailbox.dropped == 0


def test_drop_oldest_evicts_the_oldest_waiting_message_to_on_drop() -> None:
    mailbox, drops = make_mailbox(capacity=2, overflow="drop_oldest")
    for i in range(5):
        mailbox.put_nowait(i)
    assert drops.dropped == [0, 1, 2]
    assert all(isinstance(e, MailboxFull) for e in drops.errors)
    assert "drop_oldest" in str(drops.errors[0])
    assert mailbox.dropped == 3
    assert take_all(mailbox) == [3, 4]


def test_drop_newest_hands_the_incoming_message_to_on_drop() -> None:
    mailbox, drops = make_mailbox(capacity=2, overflow="drop_newest")
    for i in range(5):
        mailbox.put_nowait(i)
    assert drops.dropped == [2, 3, 4]
    assert "drop_newest" in str(drops.errors[0])
    assert mailbox.dropped == 3
    assert take_all(mailbox) == [0, 1]


@pytest.mark.parametrize(
    ("policy", "kept", "dropped"),
    [("drop_oldest", [2, 3], [1]), ("drop_newest", [1, 2], [3])],
)
async def test_async_put_applies_a_drop_policy_without_waiting(
    policy: str, kept: list[int], dropped: list[int]
) -> None:
    mailbox, drops = make_mailbox(capacity=2, overflow=policy)
    with trio.testing.assert_no_checkpoints():
        for i in (1, 2, 3):
            await mailbox.put(i)
    assert drops.dropped == dropped
    assert take_all(mailbox) == kept


# ---------------------------------------------------------------- system lane


def test_system_lane_is_fifo_and_separate_from_user_messages() -> None:
    mailbox, _ = make_mailbox(capacity=1, overflow="fail")
    mailbox.put_nowait("user")
    assert mailbox.take_system() is None
    mailbox.post_system("stop")
    mailbox.post_system("restart")
    # The system lane has no capacity limit of its own: it never refuses a signal.
    mailbox.post_system("third")
    assert mailbox.statistics().system_depth == 3
    assert mailbox.statistics().depth == 1
    assert [mailbox.take_system() for _ in range(4)] == ["stop", "restart", "third", None]
    assert take_all(mailbox) == ["user"]


# ---------------------------------------------------------------- closing


async def test_closed_mailbox_refuses_new_messages_with_a_clear_error() -> None:
    mailbox, _ = make_mailbox(capacity=5)
    mailbox.put_nowait("queued")
    mailbox.close()
    with pytest.raises(MailboxClosed, match="closed and takes no more messages"):
        mailbox.put_nowait("late")
    with pytest.raises(MailboxClosed, match="closed and takes no more messages"):
        await mailbox.put("late")
    assert mailbox.closed
    assert mailbox.get_nowait() == "queued"
    with pytest.raises(trio.EndOfChannel):
        mailbox.get_nowait()


async def test_closing_wakes_a_blocked_sender_with_mailbox_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mailbox, _ = make_mailbox(capacity=1, overflow="block")
    mailbox.put_nowait(1)
    errors: list[BaseException] = []

    async def sender() -> None:
        try:
            await mailbox.put(2)
        except MailboxClosed as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        mailbox.close()
    assert len(errors) == 1
    assert take_all(mailbox) == [1]


def test_close_twice_is_harmless() -> None:
    mailbox, _ = make_mailbox()
    mailbox.close()
    mailbox.close()
    assert mailbox.closed


def test_drain_closes_and_returns_the_backlog_oldest_first() -> None:
    mailbox, _ = make_mailbox(capacity=5)
    for i in range(4):
        mailbox.put_nowait(i)
    assert mailbox.drain() == [0, 1, 2, 3]
    assert mailbox.closed
    assert len(mailbox) == 0
    assert mailbox.drain() == []


# ---------------------------------------------------------------- statistics


def test_statistics_snapshot_reports_depths_capacity_policy_drops_and_state() -> None:
    mailbox, _ = make_mailbox(capacity=2, overflow="drop_newest")
    for i in range(3):
        mailbox.put_nowait(i)
    mailbox.post_system("signal")
    stats = mailbox.statistics()
    assert stats == MailboxStatistics(
        depth=2,
        system_depth=1,
        capacity=2,
        overflow=Overflow.DROP_NEWEST,
        dropped=1,
        closed=False,
    )
    mailbox.close()
    assert mailbox.statistics().closed is True
    # A snapshot does not change afterwards.
    assert stats.closed is False
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.depth = 0  # type: ignore[misc]


def test_mailbox_repr_shows_depth_capacity_and_policy() -> None:
    mailbox, _ = make_mailbox(capacity=4, overflow="fail")
    mailbox.put_nowait(1)
    assert repr(mailbox) == "<Mailbox depth=1 capacity=4 overflow=fail closed=False>"


# ---------------------------------------------------------------- dead letters


def test_dead_letters_default_to_a_ring_of_10000() -> None:
    assert DeadLetters().capacity == DEFAULT_DEAD_LETTER_CAPACITY == 10_000


def test_dead_letter_ring_evicts_the_oldest_and_counts_evictions() -> None:
    letters = DeadLetters(capacity=2)
    for i in range(5):
        letters.record(i, "/app/a", DeadLetterReason.STOPPED)
    assert [letter.message for letter in letters] == [3, 4]
    assert len(letters) == 2
    assert letters.evicted == 3
    assert letters.total == 5


def test_dead_letter_record_keeps_message_recipient_reason_and_exception() -> None:
    letters = DeadLetters()
    error = ValueError("bad")
    letter = letters.record("m", "/app/a", DeadLetterReason.CRASHED, error, {"id": "1"})
    assert letter == DeadLetter("m", "/app/a", DeadLetterReason.CRASHED, error, {"id": "1"}, None)
    assert list(letters) == [letter]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        letter.reason = DeadLetterReason.STOPPED  # type: ignore[misc]


async def test_dead_letter_time_comes_from_the_trio_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    letters = DeadLetters()
    await trio.sleep(7)
    letter = letters.record("m", "/app/a", DeadLetterReason.SHUTDOWN)
    assert letter.time == 7.0


def test_dead_letter_subscribers_get_each_record_until_they_unsubscribe() -> None:
    letters = DeadLetters()
    seen: list[object] = []
    unsubscribe = letters.subscribe(lambda letter: seen.append(letter.message))
    letters.record(1, "/app/a", DeadLetterReason.STOPPED)
    unsubscribe()
    unsubscribe()  # a second call does nothing
    letters.record(2, "/app/a", DeadLetterReason.STOPPED)
    assert seen == [1]


def test_a_dead_letter_subscriber_that_raises_is_kept_and_others_still_run() -> None:
    letters = DeadLetters()
    seen: list[object] = []

    def broken(letter: DeadLetter) -> None:
        raise RuntimeError("subscriber bug")

    letters.subscribe(broken)
    letters.subscribe(lambda letter: seen.append(letter.message))
    letters.record(1, "/app/a", DeadLetterReason.STOPPED)
    letters.record(2, "/app/a", DeadLetterReason.STOPPED)
    assert seen == [1, 2]
    assert len(letters) == 2


def test_clearing_dead_letters_forgets_records_but_keeps_counters() -> None:
    letters = DeadLetters(capacity=1)
    letters.record(1, "/a", DeadLetterReason.STOPPED)
    letters.record(2, "/a", DeadLetterReason.STOPPED)
    letters.clear()
    assert list(letters) == []
    assert (letters.total, letters.evicted) == (2, 1)
    assert repr(letters) == "<DeadLetters kept=0 total=2 evicted=1>"
