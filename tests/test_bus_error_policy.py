"""Error policies: rules per exception type, attempts, retry modes, and how the bus applies them."""

from __future__ import annotations

import math
import random

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from triobus import (
    Backoff,
    BusRunner,
    Command,
    DeadLetter,
    DeadLetterReason,
    ErrorPolicy,
    Event,
    MessageBus,
    Module,
    RetryMode,
    current_context,
    local_queue,
    open_bus,
    route,
)
from triobus.bus._policy import DEAD_LETTER, Decision

RNG = random.Random(0)


def decisions(policy: ErrorPolicy, error: Exception, calls: int) -> list[Decision]:
    """The decisions after handler calls 1..calls all failed with ``error``."""
    return [policy.decide(error, attempt, RNG) for attempt in range(1, calls + 1)]


# ---------------------------------------------------------------- the policy alone


def test_the_first_matching_rule_decides() -> None:
    policy = ErrorPolicy().on(LookupError).dead_letter().on(KeyError).retry(attempts=5)
    assert policy.rule_for(KeyError("k")) is policy.rules[0]
    assert policy.decide(KeyError("k"), 1, RNG) == DEAD_LETTER


def test_a_rule_matches_subclasses_of_its_types() -> None:
    policy = ErrorPolicy().on(OSError).requeue(attempts=2)
    assert policy.decide(ConnectionResetError(), 1, RNG) == Decision(RetryMode.REQUEUE)
    assert policy.decide(TimeoutError(), 1, RNG) == Decision(RetryMode.REQUEUE)


def test_a_rule_may_name_several_types() -> None:
    policy = ErrorPolicy().on(ValueError, KeyError).dead_letter()
    assert policy.rule_for(KeyError()) is policy.rules[0]
    assert policy.rule_for(ValueError()) is policy.rules[0]
    assert policy.rule_for(TypeError()) is policy.fallback


def test_an_exception_no_rule_matches_gets_the_default_rule() -> None:
    policy = ErrorPolicy().on(ValueError).dead_letter().otherwise().schedule_retry(1.0, 2.0)
    assert policy.rule_for(RuntimeError()) is policy.fallback
    assert decisions(policy, RuntimeError(), 3) == [
        Decision(RetryMode.LATER, 1.0),
        Decision(RetryMode.LATER, 2.0),
        DEAD_LETTER,
    ]


def test_the_default_policy_retries_at_once_three_calls_in_all() -> None:
    assert decisions(ErrorPolicy(), RuntimeError(), 3) == [
        Decision(RetryMode.NOW),
        Decision(RetryMode.NOW),
        DEAD_LETTER,
    ]
    assert ErrorPolicy().max_attempts == 3
    assert local_queue("q").errors == ErrorPolicy()


def test_attempts_count_handler_calls_the_first_one_included() -> None:
    policy = ErrorPolicy().otherwise().retry(attempts=4)
    assert decisions(policy, ValueError(), 4) == [Decision(RetryMode.NOW)] * 3 + [DEAD_LETTER]
    once = ErrorPolicy().otherwise().retry(attempts=1)
    assert decisions(once, ValueError(), 1) == [DEAD_LETTER]


def test_requeue_counts_attempts_like_retry() -> None:
    policy = ErrorPolicy().otherwise().requeue(attempts=3)
    assert decisions(policy, ValueError(), 3) == [Decision(RetryMode.REQUEUE)] * 2 + [DEAD_LETTER]


def test_schedule_retry_waits_each_delay_in_turn_then_dead_letters() -> None:
    policy = ErrorPolicy().otherwise().schedule_retry(1, 2.5, 4)
    assert policy.fallback.attempts == 4
    assert decisions(policy, ValueError(), 4) == [
        Decision(RetryMode.LATER, 1.0),
        Decision(RetryMode.LATER, 2.5),
        Decision(RetryMode.LATER, 4.0),
        DEAD_LETTER,
    ]


def test_backoff_delays_grow_exponentially_up_to_the_maximum() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, maximum=5.0, jitter=0)
    policy = ErrorPolicy().otherwise().retry_with_backoff(backoff, attempts=5)
    assert [decision.delay for decision in decisions(policy, ValueError(), 4)] == [
        1.0,
        2.0,
        4.0,
        5.0,
    ]
    assert decisions(policy, ValueError(), 5)[-1] == DEAD_LETTER


def test_backoff_jitter_spreads_each_delay_within_its_fraction() -> None:
    policy = ErrorPolicy().otherwise().retry_with_backoff(Backoff(initial=10.0, jitter=0.2))
    delays = [policy.decide(ValueError(), 1, random.Random(seed)).delay for seed in range(50)]
    assert all(8.0 <= delay <= 12.0 for delay in delays)
    assert len(set(delays)) > 1


def test_retries_shorthand_is_the_default_rule() -> None:
    assert decisions(ErrorPolicy.retries(1), ValueError(), 2) == [
        Decision(RetryMode.NOW),
        DEAD_LETTER,
    ]
    later = ErrorPolicy.retries(2, Backoff(initial=3.0, jitter=0))
    assert decisions(later, ValueError(), 3) == [
        Decision(RetryMode.LATER, 3.0),
        Decision(RetryMode.LATER, 6.0),
        DEAD_LETTER,
    ]
    assert decisions(ErrorPolicy.retries(0), ValueError(), 1) == [DEAD_LETTER]
    assert local_queue("q", retries=5).errors == ErrorPolicy.retries(5)


def test_errors_replace_the_retries_shorthand_of_local_queue() -> None:
    policy = ErrorPolicy().on(ValueError).dead_letter()
    assert local_queue("q", retries=7, errors=policy).errors is policy


def test_building_a_rule_leaves_the_policy_it_started_from_unchanged() -> None:
    base = ErrorPolicy().on(ValueError).dead_letter()
    extended = base.on(KeyError).requeue()
    assert len(base.rules) == 1
    assert len(extended.rules) == 2
    assert base.otherwise().dead_letter().rules == base.rules


def test_max_attempts_is_the_most_any_rule_allows() -> None:
    policy = ErrorPolicy().on(ValueError).retry(attempts=7).otherwise().dead_letter()
    assert policy.max_attempts == 7


HIERARCHY = [Exception, LookupError, KeyError, IndexError, ValueError, OSError, TimeoutError]


@given(
    rules=st.lists(st.sampled_from(HIERARCHY), max_size=5),
    raised=st.sampled_from([KeyError, IndexError, ValueError, TimeoutError, RuntimeError]),
)
def test_the_rule_for_an_exception_is_the_first_that_matches_it(
    rules: list[type[Exception]], raised: type[Exception]
) -> None:
    policy = ErrorPolicy()
    for attempts, kind in enumerate(rules, start=1):
        policy = policy.on(kind).retry(attempts=attempts)
    matching = [rule for rule in policy.rules if issubclass(raised, rule.exceptions)]
    assert policy.rule_for(raised()) is (matching[0] if matching else policy.fallback)


@given(attempts=st.integers(1, 12), action=st.sampled_from(["retry", "backoff", "requeue"]))
def test_a_rule_with_n_attempts_retries_n_minus_one_times_then_dead_letters(
    attempts: int, action: str
) -> None:
    builder = ErrorPolicy().otherwise()
    policy = {
        "retry": lambda: builder.retry(attempts=attempts),
        "backoff": lambda: builder.retry_with_backoff(Backoff(jitter=0), attempts=attempts),
        "requeue": lambda: builder.requeue(attempts=attempts),
    }[action]()
    made = decisions(policy, ValueError(), attempts)
    assert all(decision.retry is not None for decision in made[:-1])
    assert made[-1] == DEAD_LETTER


@pytest.mark.parametrize("attempts", [0, -1, 1.5, True, "3"])
def test_attempts_must_be_a_whole_number_of_at_least_one(attempts: object) -> None:
    builder = ErrorPolicy().on(ValueError)
    for build in (builder.retry, builder.requeue):
        with pytest.raises(ValueError, match=r"attempts counts handler calls.*got"):
            build(attempts=attempts)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempts counts handler calls"):
        builder.retry_with_backoff(attempts=attempts)  # type: ignore[arg-type]


def test_schedule_retry_needs_at_least_one_delay() -> None:
    with pytest.raises(ValueError, match="at least one delay"):
        ErrorPolicy().otherwise().schedule_retry()


@pytest.mark.parametrize("delay", [-1, math.nan, math.inf, True, "1"])
def test_a_scheduled_delay_must_be_seconds_of_at_least_zero(delay: object) -> None:
    with pytest.raises(ValueError, match="a retry delay is a finite number of seconds >= 0"):
        ErrorPolicy().otherwise().schedule_retry(1.0, delay)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [int, "ValueError", ValueError("x"), None])
def test_a_rule_takes_exception_types_only(kind: object) -> None:
    with pytest.raises(TypeError, match="on\\(\\) takes exception types"):
        ErrorPolicy().on(kind)  # type: ignore[arg-type]


def test_a_rule_needs_at_least_one_exception_type() -> None:
    with pytest.raises(ValueError, match="at least one exception type"):
        ErrorPolicy().on()


def test_retries_must_be_a_whole_number_of_at_least_zero() -> None:
    with pytest.raises(ValueError, match="retries must be a whole number >= 0"):
        ErrorPolicy.retries(-1)
    with pytest.raises(ValueError, match="retries must be a whole number >= 0"):
        local_queue("q", retries=-1)


# ---------------------------------------------------------------- through the bus


@attrs.frozen
class Job(Command):
    name: str


@attrs.frozen
class Happened(Event):
    name: str


class Journal:
    """Handler calls as (trio time, what), and a plan of failures per job name."""

    def __init__(self, failures: dict[str, list[type[Exception] | None]] | None = None) -> None:
        self.calls: list[tuple[float, str]] = []
        self.failures = failures or {}

    def note(self, what: str, name: str) -> None:
        self.calls.append((trio.current_time(), what))
        plan = self.failures.get(name)
        if plan:
            error = plan.pop(0)
            if error is not None:
                raise error(what)

    def names(self) -> list[str]:
        return [what for _, what in self.calls]

    async def job(self, command: Job) -> None:
        self.note(command.name, command.name)


def job_bus(journal: Journal, policy: ErrorPolicy, **options: object) -> BusRunner:
    module = Module("jobs").bind_request(Job, journal.job)
    return open_bus(
        module,
        endpoints=[local_queue("jobs", errors=policy)],
        routing=[route(Job).to("jobs")],
        **options,  # type: ignore[arg-type]
    )


def failed_letters(bus: MessageBus) -> list[DeadLetter]:
    return [letter for letter in bus.dead_letters if letter.reason is DeadLetterReason.FAILED]


async def test_each_exception_type_gets_its_own_rule_on_one_endpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"bad": [ValueError] * 5, "slow": [TimeoutError, TimeoutError]})
    policy = ErrorPolicy().on(ValueError).dead_letter().on(TimeoutError).retry(attempts=3)
    async with job_bus(journal, policy) as bus:
        await bus.send(Job("bad"))
        await bus.send(Job("slow"))
        await bus.wait_quiet()
        letters = failed_letters(bus)
    assert journal.names() == ["bad", "slow", "slow", "slow"]
    assert [(letter.message, letter.context["attempts"]) for letter in letters] == [(Job("bad"), 1)]
    assert isinstance(letters[0].exception, ValueError)


async def test_a_message_is_dead_lettered_after_its_last_attempt_with_the_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"doomed": [KeyError, RuntimeError, LookupError, ValueError]})
    async with job_bus(journal, ErrorPolicy().otherwise().retry(attempts=4)) as bus:
        await bus.send(Job("doomed"))
        await bus.wait_quiet()
        letters = failed_letters(bus)
        assert bus.in_flight == 0
    assert journal.names() == ["doomed"] * 4
    assert len(letters) == 1
    assert letters[0].context["attempts"] == 4
    assert isinstance(letters[0].exception, ValueError)  # the last failure


async def test_the_default_rule_applies_when_no_rule_matches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"odd": [RuntimeError] * 9})
    policy = ErrorPolicy().on(ValueError).dead_letter().otherwise().retry(attempts=2)
    async with job_bus(journal, policy) as bus:
        await bus.send(Job("odd"))
        await bus.wait_quiet()
        assert [letter.context["attempts"] for letter in failed_letters(bus)] == [2]
    assert journal.names() == ["odd", "odd"]


async def test_schedule_retry_calls_again_after_each_delay_in_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"flaky": [OSError] * 9})
    async with job_bus(journal, ErrorPolicy().otherwise().schedule_retry(1, 2, 4)) as bus:
        start = trio.current_time()
        await bus.send(Job("flaky"))
        await bus.wait_quiet()
        assert [letter.context["attempts"] for letter in failed_letters(bus)] == [4]
    assert [at - start for at, _ in journal.calls] == [0, 1, 3, 7]


async def test_retry_with_backoff_waits_the_backoff_before_each_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"flaky": [OSError] * 9})
    backoff = Backoff(initial=1.0, factor=3.0, maximum=100.0, jitter=0)
    policy = ErrorPolicy().otherwise().retry_with_backoff(backoff, attempts=4)
    async with job_bus(journal, policy) as bus:
        start = trio.current_time()
        await bus.send(Job("flaky"))
        await bus.wait_quiet()
        assert len(failed_letters(bus)) == 1
    assert [at - start for at, _ in journal.calls] == [0, 1, 4, 13]


async def test_a_message_waiting_on_its_backoff_lets_the_messages_behind_it_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Fails on an in-place retry (sleeping in the handling): the order would be A, A, B, C.
    journal = Journal({"A": [ConnectionError]})
    backoff = Backoff(initial=5.0, jitter=0)
    policy = ErrorPolicy().on(ConnectionError).retry_with_backoff(backoff, attempts=2)
    async with job_bus(journal, policy) as bus:
        start = trio.current_time()
        for name in "ABC":
            await bus.send(Job(name))
        await bus.wait_quiet()
        assert failed_letters(bus) == []
    assert [(at - start, what) for at, what in journal.calls] == [
        (0, "A"),
        (0, "B"),
        (0, "C"),
        (5, "A"),
    ]


async def test_requeue_puts_the_message_behind_the_ones_already_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"A": [ConnectionError, ConnectionError]})
    async with job_bus(journal, ErrorPolicy().otherwise().requeue(attempts=3)) as bus:
        for name in "ABC":
            await bus.send(Job(name))
        await bus.wait_quiet()
        assert failed_letters(bus) == []
    assert journal.names() == ["A", "B", "C", "A", "A"]
    assert {at for at, _ in journal.calls} == {0}  # no wait


async def test_a_retry_at_once_keeps_the_queue_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"A": [ConnectionError, ConnectionError]})
    async with job_bus(journal, ErrorPolicy().otherwise().retry(attempts=3)) as bus:
        for name in "ABC":
            await bus.send(Job(name))
        await bus.wait_quiet()
    assert journal.names() == ["A", "A", "A", "B", "C"]


async def test_a_retried_delivery_keeps_its_message_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[str] = []

    async def job(command: Job) -> None:
        context = current_context()
        assert context is not None
        seen.append(context.message_id)
        if len(seen) < 3:
            raise ConnectionError("not yet")

    policy = ErrorPolicy().on(ConnectionError).retry_with_backoff(Backoff(initial=1.0), attempts=3)
    module = Module("jobs").bind_request(Job, job)
    async with open_bus(
        module, endpoints=[local_queue("jobs", errors=policy)], routing=[route(Job).to("jobs")]
    ) as bus:
        await bus.send(Job("A"))
        await bus.wait_quiet()
    assert len(seen) == 3
    assert len(set(seen)) == 1


async def test_wait_quiet_waits_for_a_pending_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"A": [ConnectionError]})
    policy = ErrorPolicy().otherwise().schedule_retry(30)
    async with job_bus(journal, policy) as bus:
        start = trio.current_time()
        await bus.send(Job("A"))
        await trio.sleep(1)
        assert journal.names() == ["A"]
        assert bus.in_flight == 1  # waiting for its retry
        await bus.wait_quiet()
        assert trio.current_time() - start == 30
        assert bus.in_flight == 0
    assert journal.names() == ["A", "A"]


async def test_a_final_stop_dead_letters_a_retry_still_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"A": [ConnectionError]})
    policy = ErrorPolicy().otherwise().schedule_retry(100)
    async with job_bus(journal, policy, drain_timeout=1) as bus:
        start = trio.current_time()
        await bus.send(Job("A"))
    assert trio.current_time() - start < 100
    assert journal.names() == ["A"]
    letters = list(bus.dead_letters)
    assert [(letter.message, letter.reason) for letter in letters] == [
        (Job("A"), DeadLetterReason.SHUTDOWN)
    ]
    assert bus.in_flight == 0


async def test_a_message_failing_during_the_final_drain_is_dead_lettered_not_retried_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The backlog is handled within the shutdown deadline after the waiting
    # retries were dropped: a retry asked for then is a shutdown dead letter.
    journal = Journal({"A": [ConnectionError], "B": [ConnectionError]})

    async def job(command: Job) -> None:
        await trio.sleep(2)
        journal.note(command.name, command.name)

    module = Module("jobs").bind_request(Job, job)
    policy = ErrorPolicy().otherwise().schedule_retry(10)
    async with open_bus(
        module,
        endpoints=[local_queue("jobs", errors=policy, shutdown=30)],
        routing=[route(Job).to("jobs")],
        drain_timeout=1,
    ) as bus:
        await bus.send(Job("A"))
        await bus.send(Job("B"))
    assert journal.names() == ["A", "B"]
    reasons = sorted((str(letter.message), letter.reason) for letter in bus.dead_letters)
    assert reasons == [
        (str(Job("A")), DeadLetterReason.SHUTDOWN),
        (str(Job("B")), DeadLetterReason.SHUTDOWN),
    ]
    assert bus.in_flight == 0


# ---------------------------------------------------------------- events with two handlers


def two_handler_bus(journal: Journal, policy: ErrorPolicy) -> BusRunner:
    async def first(event: Happened) -> None:
        journal.note("first", "first")

    async def second(event: Happened) -> None:
        journal.note("second", "second")

    module = Module("events").bind_event(Happened, [first, second])
    return open_bus(
        module,
        endpoints=[local_queue("events", errors=policy)],
        routing=[route(Happened).to("events")],
    )


async def test_the_second_handler_runs_once_after_the_first_retried_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"first": [ConnectionError]})
    async with two_handler_bus(journal, ErrorPolicy().otherwise().schedule_retry(5)) as bus:
        start = trio.current_time()
        await bus.publish(Happened("x"))
        await bus.wait_quiet()
        assert failed_letters(bus) == []
    assert [(at - start, what) for at, what in journal.calls] == [
        (0, "first"),
        (5, "first"),
        (5, "second"),
    ]


async def test_a_handler_done_is_not_run_again_when_the_next_one_retries_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal({"second": [ConnectionError, ConnectionError]})
    async with two_handler_bus(journal, ErrorPolicy().otherwise().schedule_retry(5, 5)) as bus:
        start = trio.current_time()
        await bus.publish(Happened("x"))
        await bus.wait_quiet()
        assert failed_letters(bus) == []
    assert [(at - start, what) for at, what in journal.calls] == [
        (0, "first"),
        (0, "second"),
        (5, "second"),
        (10, "second"),
    ]


async def test_each_handler_of_an_event_gets_its_full_attempts_after_a_retry_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The first handler succeeds on its second attempt; the attempt count
    # starts afresh for the second handler.
    journal = Journal({"first": [ConnectionError], "second": [ConnectionError] * 9})
    async with two_handler_bus(journal, ErrorPolicy().otherwise().schedule_retry(1, 1)) as bus:
        await bus.publish(Happened("x"))
        await bus.wait_quiet()
        letters = failed_letters(bus)
    assert journal.names() == ["first", "first", "second", "second", "second"]
    assert [(letter.context["handler"], letter.context["attempts"]) for letter in letters] == [
        (letters[0].context["handler"], 3)
    ]
    assert "second" in letters[0].context["handler"]
