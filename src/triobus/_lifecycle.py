"""Life-cycle words shared by actors and supervisors."""

from __future__ import annotations

import enum

from ._choices import parse_choice


class Restart(enum.StrEnum):
    """When a supervisor restarts a child that ended (OTP restart types)."""

    #: Always restarted, also after a normal exit (the default).
    PERMANENT = "permanent"
    #: Restarted only after an abnormal exit (an exception).
    TRANSIENT = "transient"
    #: Never restarted; its spec is dropped when it ends.
    TEMPORARY = "temporary"


class ChildKind(enum.StrEnum):
    """What a node of the supervision tree is."""

    ACTOR = "actor"
    SUPERVISOR = "supervisor"


class ChildState(enum.StrEnum):
    """Where a node of the supervision tree is in its life."""

    #: Created, not started yet.
    NEW = "new"
    #: Starting (its ``on_start`` is running).
    STARTING = "starting"
    #: Running and taking messages.
    RUNNING = "running"
    #: Ended, waiting for its supervisor to restart it (or in a backoff).
    RESTARTING = "restarting"
    #: Stopping (draining or waiting for its handler).
    STOPPING = "stopping"
    #: Stopped for good: its mailbox is closed.
    STOPPED = "stopped"


def to_restart(value: Restart | str) -> Restart:
    """``Restart(value)`` with an error that lists the choices."""
    return parse_choice(Restart, value, "restart type")
