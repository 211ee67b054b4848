"""Message identity and bad input: versions, reprs in errors, handler kinds, advice."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import attrs
import pytest

from triobus import (
    DeadLetterReason,
    DeadLetters,
    Event,
    MessageVersionError,
    Module,
    Request,
    RequestHandlerAlreadyRegistered,
    TriobusError,
    open_bus,
)
from triobus.bus._messages import short_repr


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


# ---------------------------------------------------------------- capped reprs

HUGE = "x" * 10_000_000


@attrs.frozen
class Upload(Request[None]):
    data: str


def test_short_repr_keeps_a_short_repr_whole() -> None:
    assert short_repr(Upload("abc")) == "Upload(data='abc')"


def test_short_repr_cuts_a_long_repr_with_an_ellipsis_and_its_length() -> None:
    text = short_repr(Upload(HUGE), limit=20)
    assert text == f"Upload(data='xxxxxxx... ({len(repr(Upload(HUGE)))} chars)"


def test_short_repr_survives_a_repr_that_raises() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert short_repr(Broken()) == "<Broken object, repr failed: RuntimeError>"


def test_a_huge_message_name_is_capped_in_a_bind_error() -> None:
    module = Module("m").bind_request(HUGE, handle_ask)
    with pytest.raises(RequestHandlerAlreadyRegistered) as info:
        module.bind_request(HUGE, handle_ask)
    assert len(str(info.value)) < 1_000


def test_a_huge_handler_list_is_capped_in_a_bind_error() -> None:
    with pytest.raises(TypeError) as info:
        Module("m").bind_event(Happened, HUGE)
    assert len(str(info.value)) < 1_000


async def test_a_huge_dict_message_is_capped_in_a_version_error() -> None:
    async with open_bus(Module("m").bind_request("quote", handle_ask)) as bus:
        with pytest.raises(MessageVersionError) as info:
            await bus.invoke({"message_name": HUGE, "message_version": HUGE})
    assert len(str(info.value)) < 1_000


def test_a_huge_dead_letter_is_capped_in_its_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="triobus.dead_letters")
    DeadLetters().record(Upload(HUGE), "/app/uploads", DeadLetterReason.STOPPED)
    [record] = caplog.records
    assert "Upload(data='xxx" in record.getMessage()
    assert len(record.getMessage()) < 1_000
