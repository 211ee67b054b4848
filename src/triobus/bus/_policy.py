"""Error policies: what an endpoint does when a handler fails on a told message.

An :class:`ErrorPolicy` holds rules per exception type, tried in the order
they were added (the first whose types match the exception decides), and a
default rule for everything else. A rule says how to try again and how
many handler calls a message gets in all (``attempts``, the first call
included) before it goes to dead letters:

- ``retry``: call the handler again at once, in place;
- ``retry_with_backoff``: try again after an exponential backoff with
  jitter; the message leaves the queue meanwhile, so the ones behind it pass;
- ``schedule_retry``: try again after fixed delays, one per retry;
- ``requeue``: put the message at the tail of its queue;
- ``dead_letter``: no retry.

The default policy retries at once, 3 attempts in all, then dead-letters.
An invoke (an ask) is never retried: its caller gets the exception.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from typing import Final, final

import attrs

from ..supervision import Backoff

#: Handler calls a message gets under the default rule (the first one included).
DEFAULT_ATTEMPTS: Final = 3


class RetryMode(enum.StrEnum):
    """How a rule tries a failed message again."""

    #: Call the handler again at once, in place (the queue waits).
    NOW = "now"
    #: Again after a delay: the message leaves the queue meanwhile.
    LATER = "later"
    #: Again at the tail of the queue.
    REQUEUE = "requeue"


@final
@attrs.frozen
class Decision:
    """What to do with a message whose handler just failed."""

    #: ``None``: dead-letter it; else how to try again.
    retry: RetryMode | None
    #: Seconds to wait first (``RetryMode.LATER``).
    delay: float = 0.0


DEAD_LETTER: Final = Decision(None)


def _attempts(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"attempts counts handler calls, the first one included: a whole number >= 1, "
            f"got {value!r}"
        )
    return value


def _delays(values: Sequence[float]) -> tuple[float, ...]:
    if not values:
        raise ValueError("schedule_retry needs at least one delay (seconds before each retry)")
    for value in values:
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0 <= value < math.inf
        ):
            raise ValueError(f"a retry delay is a finite number of seconds >= 0, got {value!r}")
    return tuple(float(value) for value in values)


@final
@attrs.frozen
class ErrorRule:
    """One rule of an :class:`ErrorPolicy` (made by its builder methods)."""

    #: The exception types it applies to (subclasses included).
    exceptions: tuple[type[BaseException], ...]
    #: Handler calls in all, the first included; the last failure dead-letters.
    attempts: int
    #: How to try again (``None``: never, dead-letter at once).
    mode: RetryMode | None = None
    #: The backoff between tries (``retry_with_backoff``).
    backoff: Backoff | None = None
    #: Fixed delays before each retry (``schedule_retry``).
    delays: tuple[float, ...] = ()

    def decide(self, attempt: int, rng: random.Random) -> Decision:
        """The decision after handler call number ``attempt`` (from 1) failed."""
        if self.mode is None or attempt >= self.attempts:
            return DEAD_LETTER
        if self.backoff is not None:
            return Decision(RetryMode.LATER, self.backoff.delay(attempt - 1, rng))
        if self.delays:
            return Decision(RetryMode.LATER, self.delays[min(attempt, len(self.delays)) - 1])
        return Decision(self.mode)

    def describe(self) -> str:
        if self.mode is None:
            return "dead-letter at once"
        how = {
            RetryMode.NOW: "retry at once",
            RetryMode.LATER: "retry later",
            RetryMode.REQUEUE: "requeue",
        }[self.mode]
        return f"{how}, {self.attempts} attempt(s) in all"


@final
@attrs.frozen
class ErrorPolicy:
    """Rules per exception type, then a default rule; immutable, built fluently.

    ::

        ErrorPolicy()
            .on(TimeoutError).retry_with_backoff(Backoff(initial=0.5), attempts=5)
            .on(ValueError, KeyError).dead_letter()
            .on(ConnectionError).requeue(attempts=4)

    ``otherwise()`` sets the default rule, for exceptions no rule matches;
    unless set it retries at once, 3 attempts in all.
    """

    rules: tuple[ErrorRule, ...] = ()
    fallback: ErrorRule = ErrorRule((Exception,), DEFAULT_ATTEMPTS, RetryMode.NOW)

    def on(self, *exceptions: type[BaseException]) -> RuleBuilder:
        """Start a rule for ``exceptions`` (and their subclasses)."""
        if not exceptions:
            raise ValueError("on() takes at least one exception type")
        for exception in exceptions:
            if not (isinstance(exception, type) and issubclass(exception, BaseException)):
                raise TypeError(f"on() takes exception types, got {exception!r}")
        return RuleBuilder(self, exceptions)

    def otherwise(self) -> RuleBuilder:
        """Set the default rule: for exceptions no other rule matches."""
        return RuleBuilder(self, None)

    def rule_for(self, error: BaseException) -> ErrorRule:
        """The rule that applies to ``error``: the first that matches, else the default."""
        for rule in self.rules:
            if isinstance(error, rule.exceptions):
                return rule
        return self.fallback

    def decide(self, error: BaseException, attempt: int, rng: random.Random) -> Decision:
        """What to do after handler call number ``attempt`` (from 1) failed with ``error``."""
        return self.rule_for(error).decide(attempt, rng)

    @property
    def max_attempts(self) -> int:
        """The most handler calls any rule allows (what a message that kills the process gets)."""
        return max([rule.attempts for rule in self.rules] + [self.fallback.attempts])

    @classmethod
    def retries(cls, retries: int, backoff: Backoff | None = None) -> ErrorPolicy:
        """Retry ``retries`` times (at once, or after ``backoff``), then dead-letter."""
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
        builder = cls().otherwise()
        if backoff is None:
            return builder.retry(attempts=retries + 1)
        return builder.retry_with_backoff(backoff, attempts=retries + 1)


@final
class RuleBuilder:
    """The second half of ``policy.on(...)``: say what the rule does."""

    __slots__ = ("_exceptions", "_policy")

    def __init__(
        self, policy: ErrorPolicy, exceptions: tuple[type[BaseException], ...] | None
    ) -> None:
        self._policy = policy
        self._exceptions = exceptions

    def _add(self, rule: ErrorRule) -> ErrorPolicy:
        if self._exceptions is None:
            return attrs.evolve(self._policy, fallback=rule)
        return attrs.evolve(self._policy, rules=(*self._policy.rules, rule))

    @property
    def _types(self) -> tuple[type[BaseException], ...]:
        return self._exceptions or (Exception,)

    def retry(self, *, attempts: int = DEFAULT_ATTEMPTS) -> ErrorPolicy:
        """Call the handler again at once, ``attempts`` calls in all."""
        return self._add(ErrorRule(self._types, _attempts(attempts), RetryMode.NOW))

    def retry_with_backoff(
        self, backoff: Backoff | None = None, *, attempts: int = DEFAULT_ATTEMPTS
    ) -> ErrorPolicy:
        """Try again after an exponential backoff with jitter (the queue moves on meanwhile)."""
        return self._add(
            ErrorRule(
                self._types, _attempts(attempts), RetryMode.LATER, backoff=backoff or Backoff()
            )
        )

    def schedule_retry(self, *delays: float) -> ErrorPolicy:
        """Try again after each of ``delays`` seconds in turn (``len(delays) + 1`` attempts)."""
        fixed = _delays(delays)
        return self._add(ErrorRule(self._types, len(fixed) + 1, RetryMode.LATER, delays=fixed))

    def requeue(self, *, attempts: int = DEFAULT_ATTEMPTS) -> ErrorPolicy:
        """Put the message at the tail of its queue, ``attempts`` calls in all."""
        return self._add(ErrorRule(self._types, _attempts(attempts), RetryMode.REQUEUE))

    def dead_letter(self) -> ErrorPolicy:
        """Dead-letter at the first failure."""
        return self._add(ErrorRule(self._types, 1, None))
