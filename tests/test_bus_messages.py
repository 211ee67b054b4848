"""Message identity and bad input: versions, reprs in errors, handler kinds, advice."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest

from triobus import (
    Event,
    MessageVersionError,
    Module,
    Request,
    TriobusError,
    open_bus,
)


@attrs.frozen
class Ask(Request[int]):
    n: int


@attrs.frozen
class Happened(Event):
    n: int


async def handle_ask(request: Any) -> int:
    return 1


async def on_happened(event: Any) -> None:
    pass


BAD_VERSIONS = ["2", 0, -1, True, 1.0]


def request_with_version(version: Any) -> type:
    class BadVersion(Request[int]):
        message_version: ClassVar[Any] = version

    return BadVersion


def event_with_version(version: Any) -> type:
    class BadEvent(Event):
        message_version: ClassVar[Any] = version

    return BadEvent


# ---------------------------------------------------------------- message_version


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=repr)
def test_a_malformed_message_version_fails_bind_request_naming_class_and_value(
    version: Any,
) -> None:
    with pytest.raises(MessageVersionError) as info:
        Module("m").bind_request(request_with_version(version), handle_ask)
    text = str(info.value)
    assert "BadVersion.message_version" in text
    assert repr(version) in text
    assert "whole number >= 1" in text
    assert isinstance(info.value, TriobusError)


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=repr)
def test_a_malformed_message_version_fails_bind_event(version: Any) -> None:
    with pytest.raises(MessageVersionError, match=r"BadEvent\.message_version"):
        Module("m").bind_event(event_with_version(version), [on_happened])


def test_a_malformed_class_version_fails_even_when_version_is_given() -> None:
    with pytest.raises(MessageVersionError, match=r"BadVersion\.message_version is 0"):
        Module("m").bind_request(request_with_version(0), handle_ask, version=2)


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=repr)
def test_a_malformed_version_argument_fails_at_bind_time(version: Any) -> None:
    with pytest.raises(MessageVersionError, match="version= bound for 'quote'"):
        Module("m").bind_request("quote", handle_ask, version=version)
    with pytest.raises(MessageVersionError, match=r"version= bound for Happened"):
        Module("m").bind_event(Happened, [on_happened], version=version)


async def test_a_message_with_a_malformed_version_fails_at_dispatch() -> None:
    bad = request_with_version("2")
    async with open_bus(Module("m").bind_request(Ask, handle_ask)) as bus:
        with pytest.raises(MessageVersionError, match=r"BadVersion\.message_version is '2'"):
            await bus.invoke(bad())
        with pytest.raises(MessageVersionError, match=r"BadEvent\.message_version is 0"):
            await bus.publish(event_with_version(0)())


async def test_a_dict_with_a_malformed_version_fails_at_dispatch_naming_it() -> None:
    async with open_bus(Module("m").bind_request("quote", handle_ask)) as bus:
        with pytest.raises(MessageVersionError) as info:
            await bus.invoke({"message_name": "quote", "message_version": "1"})
    assert str(info.value).startswith("the message_version of the dict message 'quote' is '1'")
