"""Supervision: OTP supervisors, restart strategies and the actor system."""

from .._lifecycle import ChildKind as ChildKind
from .._lifecycle import ChildState as ChildState
from .._lifecycle import Restart as Restart
from ._spec import DEFAULT_SHUTDOWN as DEFAULT_SHUTDOWN
from ._spec import Backoff as Backoff
from ._spec import ChildSpec as ChildSpec
from ._spec import Strategy as Strategy
from ._spec import SupervisorSpec as SupervisorSpec
from ._supervisor import SupervisorRef as SupervisorRef
from ._system import ActorSystem as ActorSystem
from ._tree import TreeNode as TreeNode

__all__ = [
    "DEFAULT_SHUTDOWN",
    "ActorSystem",
    "Backoff",
    "ChildKind",
    "ChildSpec",
    "ChildState",
    "Restart",
    "Strategy",
    "SupervisorRef",
    "SupervisorSpec",
    "TreeNode",
]
