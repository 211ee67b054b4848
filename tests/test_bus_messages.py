"""Message identity and bad input: versions, reprs in errors, handler kinds, advice."""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar

import attrs
import pytest

from triobus import (
    DeadLetterReason,
    DeadLetters,
    Event,
    InvalidHandler,
    MessageVersionError,
    Module,
    Request,
    RequestHandlerAlreadyRegistered,
    TriobusError,
    open_bus,
)
from triobus.bus._messages import short_repr, unbound_advice


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


# ---------------------------------------------------------------- handler kinds


def test_a_plain_sync_function_is_refused_as_a_handler_at_bind_time() -> None:
    def handle(request: Ask) -> int:
        return request.n

    with pytest.raises(InvalidHandler) as info:
        Module("m").bind_request(Ask, handle)
    text = str(info.value)
    assert "handle" in text
    assert "make it 'async def handle(message)'" in text
    assert "zero-argument factory or a class" in text
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, TriobusError)


def test_a_sync_lambda_is_refused_as_an_event_handler_at_bind_time() -> None:
    with pytest.raises(InvalidHandler, match="<lambda>"):
        Module("m").bind_event(Happened, [lambda event: None])


def test_a_plain_sync_function_is_refused_as_a_behavior_at_bind_time() -> None:
    def log(message: Any, next: Any) -> Any:
        return next()

    with pytest.raises(InvalidHandler) as info:
        Module("m").bind_request(Ask, handle_ask, behaviors=[log])
    assert "pipeline behavior" in str(info.value)
    assert "make it 'async def log(message, next)'" in str(info.value)


async def test_a_plain_sync_function_is_refused_in_the_global_pipeline() -> None:
    def log(message: Any, next: Any) -> Any:
        return next()

    with pytest.raises(InvalidHandler, match="log"):
        async with open_bus(Module("m").bind_request(Ask, handle_ask), pipeline=[log]):
            pass  # pragma: no cover


class Doubler:
    async def handle(self, request: Ask) -> int:
        return request.n * 2


def make_doubler(prefix: str = "") -> Doubler:
    return Doubler()


def make_with(prefix: str) -> Doubler:
    return Doubler()


async def test_zero_argument_factories_and_classes_are_still_handlers() -> None:
    module = (
        Module("m")
        .bind_request(Ask, make_doubler)  # optional parameters only
        .bind_request("partial", functools.partial(make_with, "p"))
        .bind_request("class", Doubler)
    )
    async with open_bus(module) as bus:
        assert await bus.invoke(Ask(2)) == 4


def test_a_partial_that_still_needs_arguments_is_refused() -> None:
    def handle(prefix: str, request: Ask) -> int:
        return 0

    with pytest.raises(InvalidHandler):
        Module("m").bind_request(Ask, functools.partial(handle, "p"))


class AsyncCallable:
    async def __call__(self, request: Ask) -> int:
        return request.n + 1


class AsyncBehavior:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def __call__(self, message: Any, next: Any) -> Any:
        self.log.append("around")
        return await next()


async def test_an_object_with_an_async_call_is_a_handler_and_a_behavior() -> None:
    log: list[str] = []
    module = Module("m").bind_request(Ask, AsyncCallable(), behaviors=[AsyncBehavior(log)])
    async with open_bus(module) as bus:
        assert await bus.invoke(Ask(1)) == 2
    assert log == ["around"]


# ---------------------------------------------------------------- advice for an unbound message


@pytest.mark.parametrize("verb", ["invoke", "send", "publish"])
@pytest.mark.parametrize("message", [{"n": 1}, {"message_name": ""}, {"message_name": 3}])
def test_a_dict_without_a_message_name_is_advised_to_add_one(message: Any, verb: str) -> None:
    advice = unbound_advice(message, verb)
    assert advice.startswith('a dict message is named by its "message_name" key')
    assert 'add a "message_name" key' in advice
    assert "dict," not in advice  # never: bind_request(dict, ...)


def test_a_dict_without_a_name_gets_the_bind_call_of_its_verb() -> None:
    assert unbound_advice({}, "invoke").endswith(
        "bind that name with Module(...).bind_request('orders.place', handler)"
    )
    assert unbound_advice({}, "publish").endswith(
        "bind that name with Module(...).bind_event('orders.place', [handler, ...])"
    )


def test_a_class_is_advised_to_bind_request_for_invoke_and_send() -> None:
    assert (
        unbound_advice(Ask(1), "invoke") == "bind one with Module(...).bind_request(Ask, handler)"
    )
    assert unbound_advice(Ask(1), "send") == "bind one with Module(...).bind_request(Ask, handler)"


def test_a_class_is_advised_to_bind_event_for_publish() -> None:
    assert unbound_advice(Happened(1), "publish") == (
        "bind one with Module(...).bind_event(Happened, [handler, ...])"
    )


def test_a_named_dict_or_a_str_is_advised_to_bind_its_name_and_version() -> None:
    assert unbound_advice({"message_name": "quote"}, "invoke") == (
        "bind one with Module(...).bind_request('quote', handler)"
    )
    assert unbound_advice({"message_name": "quote", "message_version": 2}, "publish") == (
        "bind one with Module(...).bind_event('quote', [handler, ...], version=2)"
    )
    assert (
        unbound_advice("ping", "send") == "bind one with Module(...).bind_request('ping', handler)"
    )


def test_advice_caps_a_huge_name_and_refuses_an_unknown_verb() -> None:
    assert len(unbound_advice(HUGE, "send")) < 1_000
    with pytest.raises(ValueError, match="verb must be one of"):
        unbound_advice(Ask(1), "sendd")
