"""Layers talk through methods and public statistics, never through each other's private state."""

from __future__ import annotations

import ast
import pathlib

import pytest

from triobus.actors._cell import ActorCell
from triobus.mailbox import Mailbox

SOURCE = pathlib.Path(__file__).parent.parent / "src" / "triobus"


def private_reads(path: pathlib.Path) -> set[str]:
    """Private attribute names that ``path`` reads or writes on objects other than ``self``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            names.add(node.attr)
    return names


def modules(*, outside: str) -> list[pathlib.Path]:
    return sorted(p for p in SOURCE.rglob("*.py") if outside not in p.relative_to(SOURCE).parts)


def private_slots(cls: type) -> set[str]:
    return {name for name in cls.__slots__ if name.startswith("_") and not name.startswith("__")}


@pytest.mark.parametrize("path", modules(outside="mailbox"), ids=lambda p: p.name)
def test_no_module_outside_the_mailbox_layer_touches_a_mailboxs_private_state(
    path: pathlib.Path,
) -> None:
    assert not private_reads(path) & private_slots(Mailbox)


@pytest.mark.parametrize("path", sorted(SOURCE.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_reads_trios_private_channel_state(path: pathlib.Path) -> None:
    source = path.read_text()
    assert "_state" not in private_reads(path)
    assert "receive_tasks" not in source


@pytest.mark.parametrize("name", ["_actor.py", "_ref.py"])
def test_the_actor_and_its_ref_reach_the_cell_only_through_its_methods(name: str) -> None:
    assert not private_reads(SOURCE / "actors" / name) & private_slots(ActorCell)
