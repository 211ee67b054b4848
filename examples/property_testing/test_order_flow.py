"""Property tests of the order flow, with reordering and duplicate delivery.

The naive flow charges twice when ChargePayment is delivered twice; hypothesis
finds that (``test_naive_flow_is_caught_double_charging``). The fixed flow,
whose payment handler is idempotent, keeps every invariant under the same
faults (``test_fixed_flow_never_double_charges``).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import Phase, given, seed, settings
from hypothesis import strategies as st

from triobus import testing
from triobus.testing import FaultInjector, RecordKind, strategies, tracked

from .order_flow import DECLINED_CARD, DoubleCharge, PlaceOrder, World, build_modules

# Orders with distinct ids, from the message strategies of the testing kit.
strategies.register(
    PlaceOrder,
    st.builds(
        PlaceOrder,
        order_id=st.just("?"),
        sku=st.sampled_from(["book", "lamp"]),
        quantity=st.integers(1, 3),
        amount=st.integers(1, 100),
        card=st.sampled_from(["4242", DECLINED_CARD]),
    ),
)
orders = strategies.message_sequences(PlaceOrder, min_size=1, max_size=6).map(
    lambda found: [
        PlaceOrder(f"o-{n}", o.sku, o.quantity, o.amount, o.card) for n, o in enumerate(found)
    ]
)


def check_order_flow(placed: list[PlaceOrder], data: st.DataObject, *, idempotent: bool) -> World:
    """Run the flow under duplicate and reordered deliveries; check its invariants."""
    world = World()

    async def scenario() -> None:
        async with testing.open_test_bus(*build_modules(world, idempotent=idempotent)) as bus:
            faults = FaultInjector(data).duplicate().reorder()
            async with tracked(bus, faults=faults) as session:
                for order in placed:
                    await bus.send(order)
                await session.wait_quiet()
            assert len(session.handled(PlaceOrder)) >= len(placed)
            assert not session.dead_letters

    testing.run(scenario)
    world.check()
    return world


@settings(max_examples=60, deadline=None)
@given(placed=orders, data=st.data())
def test_fixed_flow_never_double_charges(placed: list[PlaceOrder], data: st.DataObject) -> None:
    world = check_order_flow(placed, data, idempotent=True)
    good = {o.order_id for o in placed if o.card != DECLINED_CARD}
    assert world.shipped == good
    assert sorted(order_id for order_id, _ in world.charges) == sorted(good)


def naive_property() -> None:
    @seed(20261125)
    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        print_blob=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    @given(placed=orders, data=st.data())
    def naive(placed: list[PlaceOrder], data: st.DataObject) -> None:
        check_order_flow(placed, data, idempotent=False)

    naive()


def test_naive_flow_is_caught_double_charging() -> None:
    with pytest.raises(DoubleCharge) as caught:
        naive_property()
    # Shrunk to a small case: one order charged twice, by a duplicate delivery.
    assert re.search(r"charged more than once: \['o-\d+'\]", str(caught.value))


def test_a_failing_example_replays_the_same_way_from_its_seed() -> None:
    failures = []
    for _ in range(2):
        with pytest.raises(DoubleCharge) as caught:
            naive_property()
        failures.append((str(caught.value), getattr(caught.value, "__notes__", [])))
    assert failures[0] == failures[1]
    notes = failures[0][1]
    # Hypothesis names the failing case and every fault decision it drew.
    assert any(note.startswith(("Failing test case", "Falsifying example")) for note in notes)
    duplicated_charge = re.compile(r"delivery of \S*ChargePayment \(duplicate, reorder; .*\): 1$")
    assert any(duplicated_charge.search(note) for note in notes)


async def test_the_session_records_the_injected_duplicate() -> None:
    import random

    world = World()
    async with testing.open_test_bus(*build_modules(world, idempotent=True)) as bus:
        faults = FaultInjector(random.Random(3)).duplicate("__never__").duplicate(max_times=1)
        async with tracked(bus, faults=faults) as session:
            await bus.send(PlaceOrder("o-1", "book", 1, 10, "4242"))
            await session.wait_quiet()
    duplicated = session.of_kind(RecordKind.DUPLICATED)
    assert len(duplicated) == 1
    world.check()
