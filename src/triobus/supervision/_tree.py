"""A printable snapshot of a supervision tree."""

from __future__ import annotations

from typing import final

import attrs

from .._lifecycle import ChildKind, ChildState


@final
@attrs.frozen
class TreeNode:
    """One node of :meth:`ActorSystem.tree`: a supervisor or an actor."""

    #: The name, unique among siblings.
    name: str
    #: The full path from the root.
    path: str
    #: Actor or supervisor.
    kind: ChildKind
    #: Where it is in its life.
    state: ChildState
    #: How often its supervisor restarted it.
    restarts: int
    #: User messages waiting in its mailbox (``None`` for a supervisor).
    mailbox_depth: int | None
    #: Its children, in start order.
    children: tuple[TreeNode, ...] = ()

    def _line(self) -> str:
        parts = [self.name, str(self.kind), str(self.state), f"restarts={self.restarts}"]
        if self.mailbox_depth is not None:
            parts.append(f"mailbox={self.mailbox_depth}")
        return "  ".join(parts)

    def _lines(self, prefix: str) -> list[str]:
        lines: list[str] = []
        for index, child in enumerate(self.children):
            last = index == len(self.children) - 1
            lines.append(prefix + ("└── " if last else "├── ") + child._line())
            lines.extend(child._lines(prefix + ("    " if last else "│   ")))
        return lines

    def __str__(self) -> str:
        return "\n".join([self._line(), *self._lines("")])

    def find(self, name: str) -> TreeNode:
        """The descendant named ``name`` (depth first).

        Raises:
            LookupError: no descendant has that name.
        """
        for child in self.children:
            if child.name == name:
                return child
            try:
                return child.find(name)
            except LookupError:
                pass
        raise LookupError(f"no node named {name!r} under {self.path}")
