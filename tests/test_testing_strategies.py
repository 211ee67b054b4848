"""triobus.testing.strategies: hypothesis strategies derived from message classes.

The message classes live at module level: the strategies read field types
with ``typing.get_type_hints``, which resolves them in the module's globals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Generic, Literal, NewType, Optional, TypeVar, Union

import attrs
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from triobus import Command, Event, Request
from triobus.testing import strategies

SETTINGS = settings(max_examples=40, deadline=None)
# Finding an example, not a minimal one: no shrinking, so it stays fast; derandomized,
# so a search that succeeds once succeeds every time.
FIND = settings(
    max_examples=300, database=None, deadline=None, phases=[Phase.generate], derandomize=True
)

T = TypeVar("T")
U = TypeVar("U")
Sku = NewType("Sku", str)


# ---------------------------------------------------------------- message classes


@attrs.frozen
class Money:
    cents: int
    currency: str


@attrs.frozen
class Line:
    sku: Sku
    quantity: int
    price: Money


@attrs.frozen
class Basket:
    lines: list[Line]
    gift: Money | None
    coupon: Optional[Money]  # noqa: UP045 - the typing spelling is derived too
    discount: Union[int, Money]  # noqa: UP007 - the typing spelling is derived too


@attrs.frozen
class Containers:
    ints: list[int]
    variadic: tuple[Money, ...]
    pair: tuple[int, str]
    by_name: dict[str, Money]
    tags: set[int]
    frozen: frozenset[str]


@attrs.frozen
class Shipment:
    status: Literal["new", "packed", "shipped"]
    priority: Literal[1, 2, 3]
    weight: Annotated[int, "grams"]
    _carrier: str = "post"


@attrs.frozen
class Box(Generic[T]):
    value: T


@attrs.frozen
class Pair(Generic[U]):
    box: Box[U]
    other: U


@attrs.frozen
class Chain:
    """A recursive message: a linked list."""

    label: int
    next: Chain | None


@attrs.frozen
class Tree:
    """A recursive message: a tree."""

    label: int
    children: list[Tree]


class Opaque:
    """A class hypothesis cannot build: its ``__init__`` argument has no type."""

    def __init__(self, handle):  # type: ignore[no-untyped-def]
        self.handle = handle


@attrs.frozen
class HoldsOpaque:
    name: str
    opaque: Opaque


@attrs.define
class Untyped:
    value = attrs.field()


@attrs.frozen
class Dangling:
    value: NotDefinedAnywhere  # type: ignore[name-defined]  # noqa: F821


@attrs.frozen
class OrderPlaced(Event):
    order_id: str
    lines: list[Line]


@attrs.frozen
class PlaceOrder(Command):
    order_id: str
    quantity: int


@attrs.frozen
class GetTotal(Request[int]):
    order_id: str


# ---------------------------------------------------------------- isolation


@pytest.fixture
def overrides() -> Iterator[None]:
    """Undo every ``register`` a test makes: the overrides are process-wide."""
    saved = dict(strategies._overrides)
    try:
        yield
    finally:
        strategies._overrides.clear()
        strategies._overrides.update(saved)


def reaches(strategy: st.SearchStrategy[Any], condition: Callable[[Any], bool]) -> Any:
    """An example satisfying ``condition`` (fails with NoSuchExample if none is found)."""
    return find(strategy, condition, settings=FIND)


# ---------------------------------------------------------------- attrs fields


@SETTINGS
@given(strategies.from_type(Money))
def test_attrs_fields_get_values_of_their_declared_types(money: Money) -> None:
    assert type(money) is Money
    assert type(money.cents) is int
    assert type(money.currency) is str


@SETTINGS
@given(strategies.from_type(Line))
def test_nested_messages_are_built_from_their_own_fields(line: Line) -> None:
    assert type(line.sku) is str  # a NewType is its supertype at run time
    assert type(line.quantity) is int
    assert type(line.price) is Money
    assert type(line.price.cents) is int


@SETTINGS
@given(strategies.from_type(Basket))
def test_optional_and_union_fields_hold_one_of_their_types(basket: Basket) -> None:
    assert all(type(line) is Line for line in basket.lines)
    assert basket.gift is None or type(basket.gift) is Money
    assert basket.coupon is None or type(basket.coupon) is Money
    assert type(basket.discount) in (int, Money)


def test_every_branch_of_optional_and_union_fields_is_reached() -> None:
    baskets = strategies.from_type(Basket)
    reaches(baskets, lambda b: b.gift is None)
    reaches(baskets, lambda b: b.gift is not None)
    reaches(baskets, lambda b: b.coupon is None)
    reaches(baskets, lambda b: b.coupon is not None)
    reaches(baskets, lambda b: type(b.discount) is int)
    reaches(baskets, lambda b: type(b.discount) is Money)
    reaches(baskets, lambda b: len(b.lines) >= 2)


@SETTINGS
@given(strategies.from_type(Containers))
def test_container_fields_hold_items_of_their_declared_types(value: Containers) -> None:
    assert type(value.ints) is list
    assert all(type(i) is int for i in value.ints)
    assert type(value.variadic) is tuple
    assert all(type(m) is Money for m in value.variadic)
    assert type(value.pair) is tuple
    assert len(value.pair) == 2
    assert type(value.pair[0]) is int
    assert type(value.pair[1]) is str
    assert type(value.by_name) is dict
    assert all(type(k) is str and type(v) is Money for k, v in value.by_name.items())
    assert type(value.tags) is set
    assert all(type(t) is int for t in value.tags)
    assert type(value.frozen) is frozenset
    assert all(type(s) is str for s in value.frozen)


def test_container_fields_are_not_always_empty() -> None:
    containers = strategies.from_type(Containers)
    reaches(containers, lambda c: len(c.variadic) >= 2)
    reaches(containers, lambda c: len(c.by_name) >= 2)
    reaches(containers, lambda c: len(c.tags) >= 2)
    reaches(containers, lambda c: len(c.frozen) >= 2)


@SETTINGS
@given(strategies.from_type(Shipment))
def test_literal_and_annotated_fields(shipment: Shipment) -> None:
    assert shipment.status in ("new", "packed", "shipped")
    assert shipment.priority in (1, 2, 3)
    assert type(shipment.weight) is int
    assert type(shipment._carrier) is str  # a private field is built through its alias


def test_every_literal_value_is_reached() -> None:
    shipments = strategies.from_type(Shipment)
    for status in ("new", "packed", "shipped"):
        reaches(shipments, lambda s, status=status: s.status == status)
    for priority in (1, 2, 3):
        reaches(shipments, lambda s, priority=priority: s.priority == priority)


# ---------------------------------------------------------------- generics


@SETTINGS
@given(strategies.from_type(Box[int]), strategies.from_type(Box[str]))
def test_a_parametrized_generic_message_uses_its_type_argument(
    ints: Box[int], texts: Box[str]
) -> None:
    assert type(ints.value) is int
    assert type(texts.value) is str


@SETTINGS
@given(strategies.from_type(Box[list[Money]]))
def test_a_generic_message_over_a_container_of_messages(box: Box[list[Money]]) -> None:
    assert type(box.value) is list
    assert all(type(m) is Money for m in box.value)


@SETTINGS
@given(strategies.from_type(Pair[int]))
def test_a_type_argument_flows_into_nested_generic_messages(pair: Pair[int]) -> None:
    assert type(pair.other) is int
    assert type(pair.box.value) is int


def test_an_unparametrized_generic_message_is_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"not bound.*Box\[int\]"):
        strategies.from_type(Box)


# ---------------------------------------------------------------- recursive messages


def chain_depth(chain: Chain | None) -> int:
    return 0 if chain is None else 1 + chain_depth(chain.next)


@SETTINGS
@given(strategies.from_type(Chain))
def test_a_recursive_optional_message_is_derived(chain: Chain) -> None:
    link: Chain | None = chain
    while link is not None:
        assert type(link) is Chain
        assert type(link.label) is int
        link = link.next


def test_a_recursive_optional_message_reaches_several_levels() -> None:
    chains = strategies.from_type(Chain)
    reaches(chains, lambda c: chain_depth(c) >= 3)
    reaches(chains, lambda c: c.next is None)


def test_a_recursive_list_message_is_derived() -> None:
    trees = strategies.from_type(Tree)
    tree = reaches(trees, lambda t: any(child.children for child in t.children))
    assert all(type(child) is Tree for child in tree.children)


# ---------------------------------------------------------------- the bus's message bases


@SETTINGS
@given(data=st.data())
def test_event_command_and_request_subclasses_are_derived(data: st.DataObject) -> None:
    placed = data.draw(strategies.from_type(OrderPlaced))
    assert type(placed) is OrderPlaced
    assert all(type(line) is Line for line in placed.lines)
    command = data.draw(strategies.from_type(PlaceOrder))
    assert type(command.quantity) is int
    query = data.draw(strategies.from_type(GetTotal))
    assert type(query.order_id) is str


# ---------------------------------------------------------------- overrides


def test_register_overrides_a_type_in_nested_fields_lists_dicts_and_optionals(
    overrides: None,
) -> None:
    fixed = Money(100, "EUR")
    strategies.register(Money, st.just(fixed))

    @SETTINGS
    @given(strategies.from_type(Basket), strategies.from_type(Containers))
    def check(basket: Basket, containers: Containers) -> None:
        assert all(line.price == fixed for line in basket.lines)
        assert basket.gift in (None, fixed)
        assert basket.coupon in (None, fixed)
        assert basket.discount == fixed or type(basket.discount) is int
        assert all(m == fixed for m in containers.variadic)
        assert all(m == fixed for m in containers.by_name.values())

    check()
    reaches(strategies.from_type(Money), lambda m: m == fixed)


def test_register_overrides_a_field_type_that_is_not_a_message(overrides: None) -> None:
    strategies.register(Sku, st.sampled_from(["book", "lamp"]))

    @SETTINGS
    @given(strategies.from_type(Basket))
    def check(basket: Basket) -> None:
        assert all(line.sku in ("book", "lamp") for line in basket.lines)

    check()
    reaches(strategies.from_type(Line), lambda line: line.sku == "lamp")


def test_register_overrides_a_generic_type_argument(overrides: None) -> None:
    strategies.register(Money, st.just(Money(1, "USD")))

    @SETTINGS
    @given(strategies.from_type(Box[Money]), strategies.from_type(Box[list[Money]]))
    def check(single: Box[Money], many: Box[list[Money]]) -> None:
        assert single.value == Money(1, "USD")
        assert all(m == Money(1, "USD") for m in many.value)

    check()


def test_register_refuses_what_is_not_a_strategy(overrides: None) -> None:
    with pytest.raises(TypeError, match="hypothesis strategy"):
        strategies.register(Money, Money(1, "EUR"))  # type: ignore[arg-type]


def test_clear_overrides_goes_back_to_derived_strategies(overrides: None) -> None:
    strategies.register(Money, st.just(Money(5, "GBP")))
    strategies.clear_overrides()
    reaches(strategies.from_type(Money), lambda m: m != Money(5, "GBP"))


# ---------------------------------------------------------------- underivable types


def test_an_underivable_field_type_is_refused_at_once_naming_it() -> None:
    with pytest.raises(TypeError, match=r"Opaque.*register"):
        strategies.from_type(HoldsOpaque)


def test_a_field_without_a_type_is_refused_naming_the_field() -> None:
    with pytest.raises(TypeError, match=r"Untyped\.value has no type"):
        strategies.from_type(Untyped)


def test_a_field_type_that_does_not_resolve_is_refused_naming_the_message() -> None:
    with pytest.raises(TypeError, match="cannot read the field types of Dangling"):
        strategies.from_type(Dangling)


def test_messages_needs_at_least_one_type() -> None:
    with pytest.raises(ValueError, match="at least one message type"):
        strategies.messages()


# ---------------------------------------------------------------- several types, sequences


@SETTINGS
@given(strategies.messages(Money, Line, Shipment))
def test_messages_draws_one_of_the_given_types(message: object) -> None:
    assert type(message) in (Money, Line, Shipment)


def test_messages_reaches_every_given_type() -> None:
    mixed = strategies.messages(Money, Line, Shipment)
    for cls in (Money, Line, Shipment):
        reaches(mixed, lambda m, cls=cls: type(m) is cls)


@SETTINGS
@given(strategies.message_sequences(Money, Shipment, min_size=2, max_size=4))
def test_message_sequences_are_lists_of_the_given_types_within_bounds(
    sequence: list[object],
) -> None:
    assert type(sequence) is list
    assert 2 <= len(sequence) <= 4
    assert all(type(m) in (Money, Shipment) for m in sequence)


def test_message_sequences_mix_types_in_one_sequence() -> None:
    sequences = strategies.message_sequences(Money, Shipment, max_size=6)
    reaches(sequences, lambda s: {type(m) for m in s} == {Money, Shipment})
    reaches(sequences, lambda s: s == [])
