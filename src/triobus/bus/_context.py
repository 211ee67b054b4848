"""Message context: what handlers and the tasks they start know of their message.

While a handler runs, its delivery is in a context variable, so every
message the handler sends, invokes or publishes gets the same correlation
id and that message's id as its causation id. Tasks the handler starts
copy the context they were started in; what they send after their handler
ended goes out directly, with that context.
"""

from __future__ import annotations

from ._envelope import MessageContext
from ._handling import current_delivery
from ._protocols import IMessageBus
from ._seam import Delivery


def current_context() -> MessageContext | None:
    """The context of the message whose handler is running here, or ``None``."""
    delivery = current_delivery.get()
    return None if delivery is None else delivery.context()


def current_bus() -> IMessageBus:
    """The bus whose handler is running here: send, invoke or publish on it.

    Raises:
        RuntimeError: no handler of a bus is running in this task.
    """
    delivery = current_delivery.get()
    if delivery is None:
        raise RuntimeError(
            "current_bus() works inside a bus handler (or behavior) only: pass the bus "
            "to code that runs elsewhere"
        )
    return delivery.plan.bus


def delivery_in_hand() -> Delivery | None:
    """The delivery whose handler is running here (for endpoint kinds and units of work)."""
    return current_delivery.get()
