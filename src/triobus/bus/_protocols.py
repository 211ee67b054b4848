"""The bus interfaces, by least privilege: all three are the same bus."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, overload, runtime_checkable

from ._messages import Request

R = TypeVar("R")


@runtime_checkable
class ISender(Protocol):
    """Dispatches requests and commands: ``invoke`` and ``send``."""

    @overload
    async def invoke(
        self,
        request: Request[R],
        *,
        timeout: Any = ...,
        headers: Mapping[str, str] | None = ...,
        correlation_id: str | None = ...,
        reply_to: str | None = ...,
    ) -> R: ...

    @overload
    async def invoke(
        self,
        request: object,
        *,
        timeout: Any = ...,
        headers: Mapping[str, str] | None = ...,
        correlation_id: str | None = ...,
        reply_to: str | None = ...,
    ) -> Any: ...

    async def send(
        self,
        command: object,
        *,
        headers: Mapping[str, str] | None = ...,
        correlation_id: str | None = ...,
        reply_to: str | None = ...,
    ) -> None: ...


@runtime_checkable
class IPublisher(Protocol):
    """Broadcasts events: ``publish``."""

    async def publish(
        self,
        event: object,
        *,
        headers: Mapping[str, str] | None = ...,
        correlation_id: str | None = ...,
        reply_to: str | None = ...,
    ) -> None: ...


@runtime_checkable
class IMessageBus(ISender, IPublisher, Protocol):
    """The whole bus: ``invoke``, ``send`` and ``publish``."""
