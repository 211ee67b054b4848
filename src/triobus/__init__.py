"""triobus: an actor-model message runtime for trio applications.

The public API lives here, layer by layer: mailboxes, actors, supervision
(and, on top of them, the message bus). Everything else is private.
"""

from ._errors import ActorNameTaken as ActorNameTaken
from ._errors import ActorStartError as ActorStartError
from ._errors import ActorStopped as ActorStopped
from ._errors import AskTimeout as AskTimeout
from ._errors import DeadlockError as DeadlockError
from ._errors import MailboxClosed as MailboxClosed
from ._errors import MailboxFull as MailboxFull
from ._errors import SupervisorGaveUp as SupervisorGaveUp
from ._errors import SystemClosed as SystemClosed
from ._errors import TriobusError as TriobusError
from .actors import DEFAULT_ASK_TIMEOUT as DEFAULT_ASK_TIMEOUT
from .actors import Actor as Actor
from .actors import ActorRef as ActorRef
from .mailbox import DeadLetter as DeadLetter
from .mailbox import DeadLetterReason as DeadLetterReason
from .mailbox import DeadLetters as DeadLetters
from .mailbox import Mailbox as Mailbox
from .mailbox import MailboxSpec as MailboxSpec
from .mailbox import MailboxStatistics as MailboxStatistics
from .mailbox import Overflow as Overflow
from .supervision import ActorSystem as ActorSystem
from .supervision import Backoff as Backoff
from .supervision import ChildKind as ChildKind
from .supervision import ChildState as ChildState
from .supervision import Restart as Restart
from .supervision import Strategy as Strategy
from .supervision import SupervisorRef as SupervisorRef
from .supervision import TreeNode as TreeNode

__version__ = "0.1.0"

__all__ = [
    # errors
    "TriobusError",
    "MailboxFull",
    "MailboxClosed",
    "ActorStopped",
    "AskTimeout",
    "DeadlockError",
    "ActorNameTaken",
    "ActorStartError",
    "SupervisorGaveUp",
    "SystemClosed",
    # mailbox
    "Mailbox",
    "MailboxSpec",
    "MailboxStatistics",
    "Overflow",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetters",
    # actors
    "DEFAULT_ASK_TIMEOUT",
    "Actor",
    "ActorRef",
    # supervision
    "ActorSystem",
    "Backoff",
    "ChildKind",
    "ChildState",
    "Restart",
    "Strategy",
    "SupervisorRef",
    "TreeNode",
]


def _rewrite_module_names() -> None:
    # Reprs and docs show triobus.ActorRef, not triobus.actors._ref.ActorRef.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith("triobus."):
            obj.__module__ = "triobus"


_rewrite_module_names()
