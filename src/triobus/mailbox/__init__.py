"""Mailboxes: bounded trio memory channels with a system lane, and dead letters."""

from ._dead_letters import (
    DEFAULT_DEAD_LETTER_CAPACITY as DEFAULT_DEAD_LETTER_CAPACITY,
)
from ._dead_letters import Carrier as Carrier
from ._dead_letters import DeadLetter as DeadLetter
from ._dead_letters import DeadLetterReason as DeadLetterReason
from ._dead_letters import DeadLetters as DeadLetters
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
    "DeadLetterReason",
    "DeadLetters",
    "Mailbox",
    "MailboxSpec",
    "MailboxStatistics",
    "Overflow",
]
