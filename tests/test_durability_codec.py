"""The codec: round trips, the registry, upcasters, limits, and every way decoding fails."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import enum
import pickle
import sys
from typing import Any, ClassVar, NewType

import attrs
import cattrs
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import triobus
from triobus import (
    Codec,
    Command,
    Envelope,
    EnvelopeError,
    Event,
    InvalidBody,
    Limits,
    MalformedEnvelope,
    MessageTypeAlreadyRegistered,
    MessageTypes,
    MessageVersionError,
    Module,
    OversizeEnvelope,
    Request,
    UnknownMessage,
    UnsupportedMessageType,
    UnsupportedVersion,
    UpcasterAlreadyRegistered,
)
from triobus.bus._messages import default_message_name, message_version
from triobus.durability import ENVELOPE_REASONS, _codec
from triobus.testing import strategies

# ---------------------------------------------------------------- messages

#: An int that fits JSON's 64 bits (orjson refuses wider ones, and so does encode).
Count = NewType("Count", int)
strategies.register(Count, st.integers(min_value=-(2**63), max_value=2**63 - 1))


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Line:
    sku: str
    quantity: Count


@attrs.frozen
class OrderPlaced(Event):
    message_name: ClassVar[str] = "orders.placed"

    order_id: Count
    lines: list[Line]
    color: Color
    placed_at: datetime.datetime
    note: str | None = None
    tags: dict[str, Count] = attrs.Factory(dict)


@attrs.frozen
class CancelOrder(Command):
    order_id: Count
    reason: str


@attrs.frozen
class Quote:
    price_cents: Count
    currency: str


@attrs.frozen
class GetQuote(Request[Quote]):
    sku: str


@attrs.frozen
class Positive(Event):
    message_name: ClassVar[str] = "numbers.positive"

    n: int = attrs.field(validator=attrs.validators.gt(0))


@dataclasses.dataclass(frozen=True)
class Shipped:
    order_id: int
    weight_kg: float


@attrs.frozen
class RenamedV1(Event):
    message_name: ClassVar[str] = "customers.renamed"

    name: str


@attrs.frozen
class RenamedV2(Event):
    message_name: ClassVar[str] = "customers.renamed"
    message_version: ClassVar[int] = 2

    first: str
    last: str


@attrs.frozen
class RenamedV3(Event):
    message_name: ClassVar[str] = "customers.renamed"
    message_version: ClassVar[int] = 3

    first: str
    last: str
    title: str | None


def split_name(body: dict[str, Any]) -> dict[str, Any]:
    first, _, last = body.pop("name").partition(" ")
    return {**body, "first": first, "last": last}


def add_title(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "title": None}


def envelope(
    message: Any,
    *,
    name: str | None = None,
    version: int | None = None,
    message_id: str = "m-1",
    headers: dict[str, str] | None = None,
    causation_id: str | None = None,
    reply_to: str | None = None,
) -> Envelope:
    return Envelope(
        message_id=message_id,
        message_name=default_message_name(message) if name is None else name,
        message_version=message_version(message) if version is None else version,
        correlation_id="c-1",
        causation_id=causation_id,
        headers={} if headers is None else headers,
        reply_to=reply_to,
        created_at=1_700_000_000.25,
        message=message,
    )


def all_types() -> MessageTypes:
    return (
        MessageTypes()
        .register(OrderPlaced)
        .register(CancelOrder)
        .register(GetQuote)
        .register(Quote)
        .register(Positive)
        .register(Shipped)
        .register("orders.audit")
        .register("ping")
    )


CODEC = Codec(all_types())
PLACED = OrderPlaced(
    order_id=Count(7),
    lines=[Line("book", Count(2)), Line("lamp", Count(1))],
    color=Color.BLUE,
    placed_at=datetime.datetime(2026, 12, 3, 14, 0, 5, 123456, tzinfo=datetime.UTC),
    note=None,
    tags={"priority": Count(1)},
)


def wire(**changes: Any) -> bytes:
    """A valid envelope's bytes with top-level keys replaced (``None`` values kept)."""
    doc = orjson.loads(CODEC.encode(envelope(PLACED)))
    doc.update(changes)
    return orjson.dumps(doc)


def wire_without(key: str) -> bytes:
    doc = orjson.loads(CODEC.encode(envelope(PLACED)))
    del doc[key]
    return orjson.dumps(doc)


def decode_error(codec: Codec, data: bytes) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        codec.decode(data)
    return info.value


# ---------------------------------------------------------------- round trips


def test_nested_attrs_enums_and_datetimes_round_trip() -> None:
    sent = envelope(PLACED, headers={"tenant": "acme"}, causation_id="m-0", reply_to="replies")
    assert CODEC.decode(CODEC.encode(sent)) == sent


@pytest.mark.parametrize(
    "message",
    [CancelOrder(Count(3), "customer asked"), GetQuote("book"), Quote(Count(1250), "EUR")],
    ids=lambda m: type(m).__name__,
)
def test_commands_requests_and_responses_round_trip(message: Any) -> None:
    sent = envelope(message)
    received = CODEC.decode(CODEC.encode(sent))
    assert received == sent
    assert type(received.message) is type(message)


def test_a_dataclass_round_trips() -> None:
    sent = envelope(Shipped(order_id=4, weight_kg=1.5))
    assert CODEC.decode(CODEC.encode(sent)) == sent


def test_a_none_causation_and_reply_to_round_trip_as_none() -> None:
    received = CODEC.decode(CODEC.encode(envelope(PLACED)))
    assert received.causation_id is None
    assert received.reply_to is None


def test_a_dict_message_round_trips_with_its_name_and_version() -> None:
    audit = {"message_name": "orders.audit", "message_version": 1, "who": "ann", "n": [1, 2]}
    sent = envelope(audit)
    assert CODEC.decode(CODEC.encode(sent)) == sent


def test_a_decoded_dict_message_carries_the_envelopes_name_and_version() -> None:
    received = CODEC.decode(CODEC.encode(envelope({"who": "ann"}, name="orders.audit")))
    assert received.message == {"who": "ann", "message_name": "orders.audit", "message_version": 1}


def test_a_str_message_round_trips_as_itself() -> None:
    sent = envelope("ping")
    received = CODEC.decode(CODEC.encode(sent))
    assert received == sent
    assert received.message == "ping"


def test_the_id_comes_first_and_the_body_last_on_the_wire() -> None:
    data = CODEC.encode(envelope(PLACED, message_id="abc-9"))
    assert data.startswith(b'{"id":"abc-9",')
    assert list(orjson.loads(data)) == [
        "id",
        "name",
        "version",
        "correlation_id",
        "causation_id",
        "reply_to",
        "created_at",
        "headers",
        "body",
    ]


def test_decode_takes_bytearray_and_memoryview() -> None:
    data = CODEC.encode(envelope(PLACED))
    expected = CODEC.decode(data)
    assert CODEC.decode(bytearray(data)) == expected
    assert CODEC.decode(memoryview(data)) == expected
    doubled = memoryview(bytes(b for pair in zip(data, data, strict=True) for b in pair))
    assert CODEC.decode(doubled[::2]) == expected  # not contiguous


def test_decode_refuses_a_str() -> None:
    with pytest.raises(TypeError, match="bytes, bytearray or memoryview, got str"):
        CODEC.decode(CODEC.encode(envelope(PLACED)).decode())  # type: ignore[arg-type]


def test_decoding_never_imports_a_module_a_payload_names() -> None:
    assert "a_module_nobody_imports" not in sys.modules
    error = decode_error(CODEC, wire(name="a_module_nobody_imports.Evil"))
    assert isinstance(error, UnknownMessage)
    assert "a_module_nobody_imports" not in sys.modules


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
ids = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)
dict_messages = st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(
    lambda d: {**d, "message_name": "orders.audit", "message_version": 1}
)
generated_envelopes = st.builds(
    Envelope,
    message_id=ids,
    message_name=st.just(""),
    message_version=st.just(1),
    correlation_id=ids,
    causation_id=st.none() | ids,
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6),
    reply_to=st.none() | ids,
    created_at=st.floats(min_value=0, max_value=4e9),
    message=strategies.messages(OrderPlaced, CancelOrder, GetQuote, Quote) | dict_messages,
).map(
    lambda e: attrs.evolve(
        e,
        message_name=default_message_name(e.message),
        message_version=message_version(e.message),
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_envelopes)
def test_every_generated_envelope_round_trips(sent: Envelope) -> None:
    assert CODEC.decode(CODEC.encode(sent)) == sent


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_envelopes)
def test_plain_fields_are_checked_without_the_converter_to_the_same_fields(sent: Envelope) -> None:
    doc = orjson.loads(CODEC.encode(sent))
    plain = _codec._plain_meta(doc)
    assert plain is not None
    assert plain == _codec._structure_meta(doc, _codec._Meta)


class Text(str):
    pass


@pytest.mark.parametrize(
    "changes",
    [
        {"created_at": 5},
        {"created_at": True},
        {"version": True},
        {"id": Text("m-1")},
        {"reply_to": Text("r")},
        {"headers": {Text("k"): "v"}},
        {"headers": {"k": Text("v")}},
        {"headers": Text("h")},
    ],
)
def test_fields_not_of_their_plain_type_are_left_to_the_strict_converter(
    changes: dict[str, Any],
) -> None:
    doc = orjson.loads(wire())
    doc.update(changes)
    assert _codec._plain_meta(doc) is None


def test_a_missing_field_is_left_to_the_strict_converter() -> None:
    doc = orjson.loads(wire_without("reply_to"))
    assert _codec._plain_meta(doc) is None


def test_an_int_created_at_decodes_as_a_float_through_the_converter() -> None:
    decoded = CODEC.decode(wire(created_at=5))
    assert decoded.created_at == 5.0 and type(decoded.created_at) is float


# ---------------------------------------------------------------- the registry


def test_a_class_registers_under_the_bus_name_and_version() -> None:
    types = MessageTypes().register(OrderPlaced).register(CancelOrder).register(RenamedV2)
    assert types.registered("orders.placed", 1) is OrderPlaced
    assert types.registered(f"{__name__}.CancelOrder", 1) is CancelOrder
    assert types.registered("customers.renamed", 2) is RenamedV2
    assert types.registered("customers.renamed", 1) is None


def test_a_name_registers_as_a_dict_body() -> None:
    types = MessageTypes().register("orders.audit").register("orders.audit", version=2)
    assert types.registered("orders.audit", 1) is dict
    assert types.versions("orders.audit") == (1, 2)


def test_a_class_registers_under_a_name_and_version_given() -> None:
    types = MessageTypes().register(Shipped, name="shipping.shipped", version=4)
    assert types.registered("shipping.shipped", 4) is Shipped
    sent = envelope(Shipped(1, 2.0), name="shipping.shipped", version=4)
    assert Codec(types).decode(Codec(types).encode(sent)) == sent


def test_registering_a_class_twice_under_one_identity_does_nothing() -> None:
    types = MessageTypes().register(OrderPlaced).register(OrderPlaced)
    assert types.versions("orders.placed") == (1,)


def test_two_classes_under_one_identity_are_refused_naming_both() -> None:
    @attrs.frozen
    class OtherPlaced(Event):
        message_name: ClassVar[str] = "orders.placed"

    types = MessageTypes().register(OrderPlaced)
    with pytest.raises(MessageTypeAlreadyRegistered) as info:
        types.register(OtherPlaced)
    assert str(info.value) == (
        "'orders.placed' version 1 is already registered as class OrderPlaced, so it cannot "
        "also be class test_two_classes_under_one_identity_are_refused_naming_both.<locals>."
        "OtherPlaced: give one of them another message_name or message_version"
    )


def test_a_class_and_a_name_under_one_identity_are_refused() -> None:
    types = MessageTypes().register("orders.placed")
    with pytest.raises(MessageTypeAlreadyRegistered, match=r"a name \(dict and str messages\)"):
        types.register(OrderPlaced)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda t: t.register(3), TypeError, "a message class or a message name"),
        (lambda t: t.register(""), ValueError, "a message name must be a non-empty str"),
        (lambda t: t.register("a", name="b"), ValueError, "applies to classes only"),
        (lambda t: t.register(Quote, name=""), ValueError, "name= must be a non-empty str"),
        (lambda t: t.register(Quote, version=0), MessageVersionError, "version= is 0"),
        (lambda t: t.upcaster("a", True, add_title), MessageVersionError, "from_version"),
        (lambda t: t.upcaster("a", 1, "f"), TypeError, "an upcaster is a function"),
    ],
)
def test_bad_registrations_are_refused_with_the_value(call: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call(MessageTypes())


def test_a_second_upcaster_for_one_step_is_refused() -> None:
    types = MessageTypes().upcaster("customers.renamed", 1, split_name)
    with pytest.raises(UpcasterAlreadyRegistered, match="from version 1 to 2"):
        types.upcaster("customers.renamed", 1, add_title)


async def on_any(message: Any) -> None:
    pass


def test_from_modules_registers_bound_classes_names_versions_and_responses() -> None:
    orders = (
        Module("orders")
        .bind_request(GetQuote, on_any)
        .bind_request(CancelOrder, on_any)
        .bind_request("orders.audit", on_any, version=2)
    )
    shipping = Module("shipping").bind_event(OrderPlaced, [on_any]).bind_event("ping", [on_any])
    shipping.bind_event(RenamedV1, [on_any], version=5)
    types = MessageTypes.from_modules([orders, shipping])
    assert types.registered(f"{__name__}.GetQuote", 1) is GetQuote
    assert types.registered(f"{__name__}.Quote", 1) is Quote  # the response of GetQuote
    assert types.registered(f"{__name__}.CancelOrder", 1) is CancelOrder
    assert types.registered("orders.audit", 2) is dict
    assert types.registered("orders.placed", 1) is OrderPlaced
    assert types.registered("ping", 1) is dict
    assert types.registered("customers.renamed", 5) is RenamedV1
    assert types.registered("customers.renamed", 1) is None
    assert (
        MessageTypes.from_modules([orders], responses=False).registered(f"{__name__}.Quote", 1)
        is None
    )


def test_from_modules_refuses_two_modules_binding_one_identity_to_two_classes() -> None:
    @attrs.frozen
    class OtherPlaced(Event):
        message_name: ClassVar[str] = "orders.placed"

    one = Module("one").bind_event(OrderPlaced, [on_any])
    two = Module("two").bind_event(OtherPlaced, [on_any])
    with pytest.raises(MessageTypeAlreadyRegistered, match=r"'orders\.placed' version 1"):
        MessageTypes.from_modules([one, two])


def test_from_modules_refuses_what_is_not_a_module() -> None:
    with pytest.raises(TypeError, match="takes Module objects, got 'orders'"):
        MessageTypes.from_modules(["orders"])  # type: ignore[list-item]


def test_a_class_the_converter_cannot_structure_fails_when_the_codec_is_made() -> None:
    class Plain(Event):
        def __init__(self, n: int) -> None:
            self.n = n

    types = MessageTypes.from_modules([Module("m").bind_event(Plain, [on_any])])
    with pytest.raises(UnsupportedMessageType, match=r"cannot structure .*Plain: make it an attrs"):
        Codec(types)


def test_a_codec_keeps_the_registry_it_was_made_with() -> None:
    types = MessageTypes().register(Quote)
    codec = Codec(types)
    types.register(GetQuote)
    with pytest.raises(UnknownMessage):
        codec.encode(envelope(GetQuote("book")))


def test_a_converter_given_to_the_codec_is_used() -> None:
    converter = cattrs.preconf.orjson.make_converter()
    converter.register_unstructure_hook(Color, lambda c: c.name.lower() + "!")
    converter.register_structure_hook(Color, lambda v, _: Color[v.rstrip("!").upper()])
    codec = Codec(all_types(), converter=converter)
    data = codec.encode(envelope(PLACED))
    assert b'"color":"blue!"' in data
    assert codec.decode(data).message == PLACED


# ---------------------------------------------------------------- upcasters


def renamed_v1() -> bytes:
    producer = Codec(MessageTypes().register(RenamedV1))
    return producer.encode(envelope(RenamedV1("Ada Lovelace"), message_id="r-1"))


def test_an_old_version_is_upcast_through_the_chain_to_the_newest() -> None:
    types = MessageTypes().register(RenamedV3)
    types.upcaster("customers.renamed", 1, split_name).upcaster("customers.renamed", 2, add_title)
    received = Codec(types).decode(renamed_v1())
    assert received.message == RenamedV3("Ada", "Lovelace", None)
    assert received.message_version == 3
    assert received.message_id == "r-1"


def test_an_old_version_with_a_class_of_its_own_is_decoded_directly() -> None:
    def never(body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("an upcaster ran for a version that has its own class")

    types = MessageTypes().register(RenamedV1).register(RenamedV3)
    types.upcaster("customers.renamed", 1, never).upcaster("customers.renamed", 2, never)
    received = Codec(types).decode(renamed_v1())
    assert received.message == RenamedV1("Ada Lovelace")
    assert received.message_version == 1


def test_a_gap_in_the_chain_names_the_missing_step() -> None:
    types = MessageTypes().register(RenamedV3).upcaster("customers.renamed", 1, split_name)
    error = decode_error(Codec(types), renamed_v1())
    assert isinstance(error, UnsupportedVersion)
    assert (error.reason, error.message_id) == ("missing_upcaster", "r-1")
    assert str(error) == (
        "cannot decode envelope 'r-1' [missing_upcaster]: 'customers.renamed' version 1 has "
        "no class of its own and no upcaster path to a registered version (3): the step from "
        "version 2 to 3 is missing; register it with "
        "MessageTypes.upcaster('customers.renamed', 2, fn), or a class for version 1"
    )


def test_a_chain_that_stops_early_decodes_as_the_newest_class_it_reached() -> None:
    types = MessageTypes().register(RenamedV2).register(RenamedV3)
    types.upcaster("customers.renamed", 1, split_name)
    received = Codec(types).decode(renamed_v1())
    assert received.message == RenamedV2("Ada", "Lovelace")
    assert received.message_version == 2


def test_a_dict_message_is_upcast_and_carries_the_new_version() -> None:
    producer = Codec(MessageTypes().register("orders.audit"))
    data = producer.encode(envelope({"message_name": "orders.audit", "who": "ann"}))
    types = MessageTypes().register("orders.audit", version=2)
    types.upcaster("orders.audit", 1, lambda body: {**body, "who": body["who"].upper()})
    received = Codec(types).decode(data)
    assert received.message == {"message_name": "orders.audit", "message_version": 2, "who": "ANN"}
    assert received.message_version == 2


def test_an_upcaster_that_raises_is_an_upcaster_failed_error_with_its_cause() -> None:
    types = MessageTypes().register(RenamedV2)
    types.upcaster("customers.renamed", 1, lambda body: body["missing"])
    error = decode_error(Codec(types), renamed_v1())
    assert isinstance(error, InvalidBody)
    assert (error.reason, error.message_id) == ("upcaster_failed", "r-1")
    assert "from version 1 to 2 raised KeyError" in str(error)
    assert isinstance(error.__cause__, KeyError)


def test_an_upcaster_that_returns_no_dict_is_an_upcaster_failed_error() -> None:
    types = MessageTypes().register(RenamedV2)
    types.upcaster("customers.renamed", 1, lambda body: [body])  # type: ignore[arg-type,return-value]
    error = decode_error(Codec(types), renamed_v1())
    assert error.reason == "upcaster_failed"
    assert "returned a list, not a dict" in str(error)


def test_a_body_that_is_not_an_object_cannot_be_upcast() -> None:
    types = MessageTypes().register(RenamedV2).upcaster("customers.renamed", 1, split_name)
    data = orjson.dumps({**orjson.loads(renamed_v1()), "body": "Ada"})
    error = decode_error(Codec(types), data)
    assert (error.reason, error.message_id) == ("invalid_body", "r-1")
    assert "is a str, but upcasting it needs a JSON object" in str(error)


# ---------------------------------------------------------------- decode errors


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"", "it is not JSON"),
        (b'{"id": "m-1", ', "it is not JSON"),
        (b"[1, 2]", "it is a JSON list, not an object"),
        (b'"m-1"', "it is a JSON str, not an object"),
    ],
)
def test_bytes_that_are_no_json_object_are_malformed(data: bytes, detail: str) -> None:
    error = decode_error(CODEC, data)
    assert isinstance(error, MalformedEnvelope)
    assert error.reason == "malformed"
    assert detail in str(error)


def test_a_malformed_envelope_names_its_id_when_the_first_bytes_hold_it() -> None:
    error = decode_error(CODEC, b'{"id": "m-\\u00e9", "name": [')
    assert (error.reason, error.message_id) == ("malformed", "m-é")
    assert str(error).startswith("cannot decode envelope 'm-é' [malformed]: it is not JSON")


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (wire(version="1"), "expected int (got str) @ $.version"),
        (wire(version=True), "expected int (got bool) @ $.version"),
        (wire(version=0), "its version is 0: a version is a whole number >= 1"),
        (wire(created_at="now"), "@ $.created_at"),
        (wire(headers={"a": 1}), "expected str (got int) @ $.headers['a']"),
        (wire(headers=["a"]), "@ $.headers"),
        (wire(causation_id=5), "@ $.causation_id"),
        (wire_without("correlation_id"), "required field missing @ $.correlation_id"),
        (wire_without("body"), "it has no 'body'"),
    ],
)
def test_fields_of_the_wrong_type_are_malformed_with_cattrs_explanation(
    data: bytes, detail: str
) -> None:
    error = decode_error(CODEC, data)
    assert isinstance(error, MalformedEnvelope)
    assert (error.reason, error.message_id) == ("malformed", "m-1")
    assert detail in str(error)


def test_an_unreadable_id_is_none_and_said_so() -> None:
    error = decode_error(CODEC, wire(id=12))
    assert (error.reason, error.message_id) == ("malformed", None)
    assert str(error).startswith("cannot decode an envelope (id unreadable) [malformed]")


@pytest.mark.parametrize("field", ["id", "correlation_id", "causation_id"])
def test_an_id_holding_a_nul_character_is_malformed_both_ways(field: str) -> None:
    # No store can keep it: PostgreSQL's text columns hold no NUL.
    error = decode_error(CODEC, wire(**{field: "m-\x00"}))
    assert isinstance(error, MalformedEnvelope)
    assert f"its {field} 'm-\\x00' contains a NUL character" in str(error)
    assert error.message_id == (None if field == "id" else "m-1")  # never a NUL id
    assert decode_error(CODEC, b'{"id": "m-\\u0000", "name": [').message_id is None
    changes = {"message_id" if field == "id" else field: "m-\x00"}
    with pytest.raises(MalformedEnvelope, match="contains a NUL character"):
        CODEC.encode(attrs.evolve(envelope(PLACED), **changes))


def test_an_unknown_name_says_how_to_register_it() -> None:
    error = decode_error(CODEC, wire(name="billing.invoiced"))
    assert isinstance(error, UnknownMessage)
    assert isinstance(error, LookupError)
    assert (error.reason, error.message_id) == ("unknown_message", "m-1")
    assert str(error) == (
        "cannot decode envelope 'm-1' [unknown_message]: no message type is registered under "
        "the name 'billing.invoiced': register the class with MessageTypes.register, or bind "
        "it in a module and build the registry with MessageTypes.from_modules"
    )


def test_a_version_newer_than_the_newest_known_is_its_own_error() -> None:
    error = decode_error(CODEC, wire(version=2))
    assert isinstance(error, UnsupportedVersion)
    assert (error.reason, error.message_id) == ("version_too_new", "m-1")
    assert "'orders.placed' version 2 is newer than the newest this codec knows (version 1)" in (
        str(error)
    )


def test_a_body_that_does_not_fit_its_class_is_invalid_with_cattrs_explanation() -> None:
    body = orjson.loads(wire())["body"]
    error = decode_error(CODEC, wire(body={**body, "order_id": "seven", "color": "green"}))
    assert isinstance(error, InvalidBody)
    assert (error.reason, error.message_id) == ("invalid_body", "m-1")
    assert "the body does not fit OrderPlaced (version 1)" in str(error)
    assert "expected Count (invalid literal for int()" in str(error)
    assert "@ $.body.order_id" in str(error)
    assert "expected Color" in str(error) and "@ $.body.color" in str(error)
    assert isinstance(error.__cause__, cattrs.BaseValidationError)


def test_a_validator_of_the_class_is_an_invalid_body_naming_the_rule() -> None:
    data = CODEC.encode(envelope(Positive(3)))
    error = decode_error(CODEC, orjson.dumps({**orjson.loads(data), "body": {"n": -2}}))
    assert error.reason == "invalid_body"
    assert "'n' must be > 0: -2" in str(error)


def test_a_long_explanation_is_capped() -> None:
    body = {"order_id": 1, "lines": [{"sku": i, "quantity": "x" * 50} for i in range(200)]}
    error = decode_error(CODEC, wire(body=body))
    assert error.reason == "invalid_body"
    assert len(str(error)) < 1_000
    assert "chars)" in str(error)


@pytest.mark.parametrize("body", [3, [1], None])
def test_a_name_registered_as_a_string_takes_an_object_or_a_string_body(body: Any) -> None:
    error = decode_error(CODEC, wire(name="orders.audit", body=body))
    assert (error.reason, error.message_id) == ("invalid_body", "m-1")
    assert "whose body is a JSON object (a dict message) or a string" in str(error)


def test_every_reason_belongs_to_one_family_under_envelope_error() -> None:
    assert set(ENVELOPE_REASONS) == {
        "malformed",
        "unknown_message",
        "version_too_new",
        "missing_upcaster",
        "invalid_body",
        "wrong_type",
        "upcaster_failed",
        "unserializable",
        "oversize",
        "too_many_headers",
        "header_too_long",
        "name_too_long",
        "id_too_long",
    }
    assert all(issubclass(cls, EnvelopeError) for cls in ENVELOPE_REASONS.values())
    assert issubclass(EnvelopeError, triobus.TriobusError)


def test_an_envelope_error_survives_copy_and_pickle() -> None:
    error = decode_error(CODEC, wire(version=2))
    for clone in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert type(clone) is UnsupportedVersion
        assert (clone.reason, clone.message_id, str(clone)) == (
            error.reason,
            error.message_id,
            str(error),
        )


# ---------------------------------------------------------------- encode errors


def test_encoding_an_unregistered_message_fails_at_send_time() -> None:
    with pytest.raises(UnknownMessage) as info:
        Codec(MessageTypes()).encode(envelope(PLACED, message_id="s-1"))
    assert (info.value.reason, info.value.message_id) == ("unknown_message", "s-1")
    assert "'orders.placed' version 1 is not registered" in str(info.value)
    assert "MessageTypes.register" in str(info.value)


def test_encoding_a_message_of_another_class_than_the_registered_one_fails() -> None:
    with pytest.raises(InvalidBody) as info:
        CODEC.encode(envelope(Quote(Count(1), "EUR"), name="orders.placed", version=1))
    assert info.value.reason == "wrong_type"
    assert "registered as OrderPlaced, but the message is a Quote" in str(info.value)


def test_encoding_a_non_dict_under_a_name_fails() -> None:
    with pytest.raises(InvalidBody, match="registered as a name, for dict and str messages"):
        CODEC.encode(envelope(Quote(Count(1), "EUR"), name="orders.audit"))


def test_encoding_what_json_cannot_hold_is_unserializable() -> None:
    with pytest.raises(InvalidBody) as info:
        CODEC.encode(envelope({"message_name": "orders.audit", "n": 2**70}))
    assert (info.value.reason, info.value.message_id) == ("unserializable", "m-1")
    assert "cannot be written as JSON" in str(info.value)


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"message_version": "1"}, "@ $.version"),
        ({"headers": {"a": 1}}, "@ $.headers['a']"),
        ({"headers": "a=1"}, "@ $.headers"),
        ({"created_at": float("nan")}, "@ $.created_at"),
        ({"correlation_id": None}, "@ $.correlation_id"),
    ],
)
def test_encoding_an_envelope_with_fields_of_the_wrong_type_is_malformed(
    changes: dict[str, Any], detail: str
) -> None:
    with pytest.raises(MalformedEnvelope) as info:
        CODEC.encode(attrs.evolve(envelope(PLACED), **changes))
    assert (info.value.reason, info.value.message_id) == ("malformed", "m-1")
    assert detail in str(info.value)


# ---------------------------------------------------------------- limits


def test_the_default_limits_are_documented_figures() -> None:
    assert Limits() == Limits(
        max_bytes=4 * 1024 * 1024,
        max_headers=128,
        max_header_key_length=256,
        max_header_value_length=8192,
        max_name_length=256,
        max_id_length=256,
    )


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "10"])
def test_a_bad_limit_is_refused_naming_it(value: Any) -> None:
    with pytest.raises(ValueError, match=r"Limits\.max_headers must be a whole number >= 1"):
        Limits(max_headers=value)


def test_oversize_bytes_are_refused_before_parsing_with_the_id_from_the_first_bytes() -> None:
    # Past the limit the bytes are not even JSON: only a refusal unparsed says oversize.
    data = b'{"id":"big-1","name":"orders.placed","body":' + b"\xff" * 100
    assert decode_error(Codec(all_types()), data).reason == "malformed"
    error = decode_error(Codec(all_types(), limits=Limits(max_bytes=64)), data)
    assert isinstance(error, OversizeEnvelope)
    assert (error.reason, error.message_id) == ("oversize", "big-1")
    assert str(error) == (
        "cannot decode envelope 'big-1' [oversize]: it is 144 bytes, over Limits.max_bytes "
        "(64), so it was refused unparsed: raise the limit on both sides if such messages "
        "are expected"
    )


def test_an_oversize_envelope_whose_first_bytes_hold_no_id_has_none() -> None:
    error = decode_error(Codec(all_types(), limits=Limits(max_bytes=8)), b'{"name":"x","id":"a"}')
    assert (error.reason, error.message_id) == ("oversize", None)


def test_an_envelope_of_exactly_max_bytes_passes_and_one_byte_more_is_refused() -> None:
    sent = envelope(PLACED)
    data = CODEC.encode(sent)
    exact = Codec(all_types(), limits=Limits(max_bytes=len(data)))
    assert exact.decode(exact.encode(sent)) == sent
    short = Codec(all_types(), limits=Limits(max_bytes=len(data) - 1))
    assert decode_error(short, data).reason == "oversize"
    with pytest.raises(OversizeEnvelope, match=f"it is {len(data)} bytes encoded") as info:
        short.encode(sent)
    assert (info.value.reason, info.value.message_id) == ("oversize", "m-1")


def test_too_many_headers_are_refused_before_the_fields_and_body_are_structured() -> None:
    headers = {f"h{i}": "v" for i in range(129)}
    data = wire(headers=headers, created_at="not a number", body={"order_id": "x"})
    error = decode_error(CODEC, data)
    assert isinstance(error, OversizeEnvelope)
    assert (error.reason, error.message_id) == ("too_many_headers", "m-1")
    assert "it has 129 headers, over Limits.max_headers (128)" in str(error)
    assert CODEC.decode(wire(headers=dict(list(headers.items())[:128]))).headers


def test_too_many_headers_are_refused_when_every_field_is_well_formed() -> None:
    error = decode_error(CODEC, wire(headers={f"h{i}": "v" for i in range(129)}))
    assert (error.reason, error.message_id) == ("too_many_headers", "m-1")


SMALL = Limits(max_header_key_length=4, max_header_value_length=5, max_name_length=20)


@pytest.mark.parametrize(
    ("sent", "reason", "detail"),
    [
        (envelope(PLACED, headers={"tenant": "a"}), "header_too_long", "the key of its header"),
        (envelope(PLACED, headers={"t": "abcdef"}), "header_too_long", "the value of its header"),
        (envelope(GetQuote("x")), "name_too_long", "the message name"),
        (envelope(PLACED, reply_to="r" * 21), "name_too_long", "reply_to"),
        (envelope(PLACED, message_id="i" * 257), "id_too_long", "its id is 257 characters"),
        (envelope(PLACED, causation_id="i" * 257), "id_too_long", "its causation_id"),
        (
            envelope(PLACED, headers={f"{i}": "" for i in range(129)}),
            "too_many_headers",
            "129 headers",
        ),
    ],
)
def test_encoding_refuses_what_decoding_refuses_with_the_same_reason(
    sent: Envelope, reason: str, detail: str
) -> None:
    codec = Codec(all_types(), limits=SMALL)
    with pytest.raises(OversizeEnvelope, match=detail) as refused:
        codec.encode(sent)
    data = Codec(all_types(), limits=Limits(max_headers=200, max_id_length=999)).encode(sent)
    error = decode_error(codec, data)
    assert error.reason == refused.value.reason == reason
    expected_id = None if reason == "id_too_long" and len(sent.message_id) > 256 else "m-1"
    assert error.message_id == refused.value.message_id == expected_id


# ---------------------------------------------------------------- fuzz

FUZZ_TYPES = all_types().register(RenamedV3).register(Shipped, name="shipping.shipped", version=3)
FUZZ_TYPES.upcaster("customers.renamed", 1, split_name).upcaster("customers.renamed", 2, add_title)
FUZZ_CODEC = Codec(FUZZ_TYPES, limits=Limits(max_bytes=2_000, max_headers=4))
VALID = [
    FUZZ_CODEC.encode(envelope(m, headers={"tenant": "acme"}))
    for m in (PLACED, Positive(1), {"message_name": "orders.audit", "a": [1]}, "ping")
] + [renamed_v1()]
TOP_KEYS = ["id", "name", "version", "correlation_id", "causation_id", "reply_to"]
TOP_KEYS += ["created_at", "headers", "body", "extra"]


def decodes_or_refuses(data: bytes) -> None:
    try:
        received = FUZZ_CODEC.decode(data)
    except EnvelopeError as error:
        event(error.reason)
        assert error.reason in ENVELOPE_REASONS
        assert type(error) is ENVELOPE_REASONS[error.reason]
        assert error.message_id is None or isinstance(error.message_id, str)
    else:
        event("decoded")
        assert isinstance(received, Envelope)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(VALID))
    cut = draw(st.integers(min_value=0, max_value=len(data)))
    if draw(st.booleans()):
        return data[:cut]
    byte = draw(st.integers(min_value=0, max_value=255))
    return data[:cut] + bytes([byte]) + data[cut + 1 :]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | damaged())
def test_arbitrary_bytes_decode_or_raise_only_codec_errors(data: bytes) -> None:
    decodes_or_refuses(data)


FUZZ_NAMES = sorted({name for name, _ in FUZZ_TYPES.tables()[0]})
fuzz_values = (
    st.integers(min_value=0, max_value=4)
    | st.sampled_from(["customers.renamed", "x" * 2_500])
    | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=6)
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    doc = orjson.loads(draw(st.sampled_from(VALID)))
    if draw(st.booleans()):  # another identity, known or not, for the same body
        doc["name"] = draw(st.sampled_from([*FUZZ_NAMES, "shipping"]))
        doc["version"] = draw(st.integers(min_value=1, max_value=4))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        inside = isinstance(doc.get("body"), dict) and draw(st.booleans())
        target = doc["body"] if inside else doc
        keys = sorted(target) if inside else TOP_KEYS
        key = draw(st.sampled_from(keys) if keys else st.text(max_size=5))
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(json_values | fuzz_values)
    return orjson.dumps(doc)


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_mutated_envelopes_decode_or_raise_only_codec_errors(data: bytes) -> None:
    decodes_or_refuses(data)
