"""Mailboxes: bounded trio memory channels with a system lane, and dead letters."""

from ._dead_letter import DeadLetter as DeadLetter
from ._dead_letter import DeadLetterReason as DeadLetterReason
from ._dead_letter import exception_type_name as exception_type_name
from ._dead_letter import new_letter_id as new_letter_id
from ._dead_letter_store import DeadLetterCriteria as DeadLetterCriteria
from ._dead_letter_store import DeadLetterFilter as DeadLetterFilter
from ._dead_letter_store import DeadLetterSelection as DeadLetterSelection
from ._dead_letter_store import DeadLetterStore as DeadLetterStore
from ._dead_letter_store import checked_limit as checked_limit
from ._dead_letter_store import resolve_selection as resolve_selection
from ._dead_letters import (
    DEFAULT_DEAD_LETTER_CAPACITY as DEFAULT_DEAD_LETTER_CAPACITY,
)
from ._dead_letters import Carrier as Carrier
from ._dead_letters import DeadLetters as DeadLetters
from ._dead_letters import Replay as Replay
from ._mailbox import DEFAULT_MAILBOX_CAPACITY as DEFAULT_MAILBOX_CAPACITY
from ._mailbox import Mailbox as Mailbox
from ._mailbox import MailboxSpec as MailboxSpec
from ._mailbox import MailboxStatistics as MailboxStatistics
from ._mailbox import Overflow as Overflow

__all__ = [
    "DEFAULT_DEAD_LETTER_CAPACITY",
    "DEFAULT_MAILBOX_CAPACITY",
    "Carrier",
    "DeadLetter",
    "DeadLetterCriteria",
    "DeadLetterFilter",
    "DeadLetterReason",
    "DeadLetterSelection",
    "DeadLetterStore",
    "DeadLetters",
    "Mailbox",
    "MailboxSpec",
    "MailboxStatistics",
    "Overflow",
    "Replay",
    "exception_type_name",
    "new_letter_id",
    "checked_limit",
    "resolve_selection",
]
