"""Every script in examples/ runs to completion and prints what it shows.

Scripts are found by a glob, so a new example is run too (it must exit 0);
the known ones are also checked for a few key lines of their output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60.0

#: Key lines (substrings) of each known example's output.
EXPECTED: dict[str, list[str]] = {
    "orders.py": [
        "unit of work: commit ['ORD-CUST-1-PROD-42']",
        "email to CUST-1: order ORD-CUST-1-PROD-42 placed (correlation=msg-1 causation=msg-1)",
        "analytics: order ORD-CUST-1-PROD-42 counted (correlation=msg-1 causation=msg-1)",
        "Order ORD-CUST-1-PROD-42: placed",
        "unit of work: rollback ['ORD-CUST-2-PROD-42']",
        "<- PlaceOrder failed: OutOfStock(",
        "Order rejected: 5 x PROD-42 wanted, 1 in stock",
        "saved orders: ['ORD-CUST-1-PROD-42']",
        "stock left: {'PROD-42': 1}",
    ],
    "durable_orders.py": [
        "-- first run: the warehouse is closed",
        "shipping queue: 2 waiting",
        "-- second run, after a restart: the backlog ships",
        "shipped A-1\nshipped A-3",
        "orders saved: ['A-1', 'A-3']",
        "shipments (order, times): [('A-1', 1), ('A-3', 1)]",
        "dead letters: [('orders.place', 'failed', 'OutOfStock')]",
    ],
    "integration_events.py": [
        "orders saved: ['A-1', 'A-2']",
        "published OrderPlaced to orders.placed: {'order_id': 'A-1'}",
        "published OrderState to orders.state: {'order_id': 'A-2', 'customer': 'grace', "
        "'total': 990}",
    ],
    "routing.py": [
        "request analytics.rebuild_dashboard v1 -> reports: rebuild_dashboard",
        "request notifications.send_receipt v1 -> emails: send_receipt",
        "event orders.placed v1 -> emails: email_confirmation",
        "event orders.placed v1 -> analytics: count_sale",
        "event orders.placed v1 -> default: audit_order",
        "└── bus  supervisor  running",
        "analytics  actor  running",
        "  audit_order: 3\n  count_sale: 3\n  email_confirmation: 3\n"
        "  rebuild_dashboard: 1\n  send_receipt: 3\n",
        "newsletters handled by the time the bus stopped: 50 of 50",
        "dead letters: 0",
        "bus supervisor gone after shutdown: True",
    ],
    "plugins.py": [
        "Hello, Ada!",
        "[monitor] invoke 'greet': AlreadyGreeted (cleared)\n  returned None",
        "[monitor] send 'greet': AlreadyGreeted (cleared)\n  dead letters: 0",
        "charged 12.50 to card 4242",
        "daily report: 2 greeted (Ada, Grace)",
        "[monitor] invoke 'farewell': failed with RequestHandlerNotFound",
        "  AlreadyGreeted (cleared): 2\n  failed with RequestHandlerNotFound: 1\n  ok: 5\n",
    ],
    "supervision_tree.py": [
        "worker doubles 21: 42",
        "worker crashed on 13: 13 is unlucky",
        "right counts 1 after the one_for_all restart",
        "dead letters: 0",
    ],
    "distributed_orders/main.py": [
        "services up: orders, emails, analytics",
        "Order ORD-CUST-1-PROD-42: placed",
        "Order rejected: OutOfStock: 5 x PROD-42 wanted, 1 in stock",
        "[emails] emails: order ORD-CUST-1-PROD-42 placed, mail to CUST-1",
        "[analytics] analytics: order ORD-CUST-1-PROD-42 counted",
        "services stopped",
    ],
    "property_testing/order_flow.py": [
        "charged: [('o-1', 30), ('o-3', 15)]",
        "compensated: ['o-2']",
    ],
}

#: Output that must not appear.
UNEXPECTED: dict[str, list[str]] = {
    # The rejected order's OrderPlaced was dropped with its rollback.
    "orders.py": ["CUST-2: order", "counted (correlation=msg-3"],
    # The locator builds the report handler once, however often it is used.
    "plugins.py": ["building reports.daily\n  [locator] building"],
}


def discover() -> list[str]:
    """Every example script: all .py files but packages' __init__ and tests."""
    return sorted(
        path.relative_to(EXAMPLES).as_posix()
        for path in EXAMPLES.rglob("*.py")
        if path.name not in ("__init__.py", "conftest.py") and not path.name.startswith("test_")
    )


def test_every_known_example_is_discovered() -> None:
    assert set(EXPECTED) <= set(discover())


@pytest.mark.parametrize("script", discover())
def test_example_runs(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=EXAMPLES.parent,
        check=False,
    )
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    if "RabbitMQ is not reachable" in result.stderr and os.environ.get("CI") != "true":
        pytest.skip(f"{script} needs RabbitMQ: start it (scripts/services.sh), or set CI=true")
    assert result.returncode == 0, report
    for line in EXPECTED.get(script, []):
        assert line in result.stdout, f"missing {line!r}\n{report}"
    for line in UNEXPECTED.get(script, []):
        assert line not in result.stdout, f"unexpected {line!r}\n{report}"
