"""What a tracked session records."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, final

import attrs

if TYPE_CHECKING:
    from ..bus import Delivery


class QuietTimeout(AssertionError):
    """The bus did not become quiet in time: the test fails, naming what is in flight."""


class RecordKind(enum.StrEnum):
    """What happened to a message."""

    SENT = "sent"
    INVOKED = "invoked"
    PUBLISHED = "published"
    HANDLED = "handled"
    FAILED = "failed"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    # Injected faults:
    DROPPED = "dropped"
    DUPLICATED = "duplicated"
    DELAYED = "delayed"
    REORDERED = "reordered"
    CRASHED = "crashed"


@final
@attrs.frozen
class Record:
    """One thing that happened to one message, with its context."""

    kind: RecordKind
    message: object
    message_name: str | None
    message_id: str | None
    correlation_id: str | None
    causation_id: str | None
    #: The endpoint (actor path or uri) it happened at, when known.
    endpoint: str | None = None
    #: The handler, for handled / failed / retried / crashed.
    handler: str | None = None
    #: The delivery attempt (1 = first), for handled / failed.
    attempt: int | None = None
    exception: BaseException | None = None
    #: ``trio.current_time()`` when it happened.
    time: float = 0.0
    #: Extra detail (the fault's parameters, the dead letter's reason).
    detail: Mapping[str, Any] = attrs.field(factory=dict)


class Recorder(Protocol):
    """What the fault injector needs of a session: somewhere to record, and its switch."""

    @property
    def faults(self) -> object | None:
        """The session's injector; ``None`` once faults are switched off."""

    def record(
        self,
        kind: RecordKind,
        delivery: Delivery,
        *,
        endpoint: str | None = None,
        handler: str | None = None,
        attempt: int | None = None,
        exception: BaseException | None = None,
        **detail: Any,
    ) -> None:
        """Add a record about ``delivery``."""
