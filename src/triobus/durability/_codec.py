"""The codec: envelopes to bytes and back, for durable and broker endpoints.

The wire form is one JSON object: the envelope's fields (``"id"`` first, so a
reader finds it in the first bytes), then ``"body"``, the message unstructured
by cattrs. Classes come only from a :class:`MessageTypes` registry: decoding
never imports a class named by a payload, never unpickles, never evaluates.
:class:`Limits` are checked before the work they protect (the byte length
before parsing, the header count before structuring), and encoding refuses
what decoding would refuse, so a bad message fails at send time.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Self, final

import attrs
import cattrs
import cattrs.v
import orjson
from cattrs.errors import StructureHandlerNotFoundError
from cattrs.preconf.orjson import make_converter

from .._errors import (
    ENVELOPE_REASONS,
    EnvelopeError,
    MessageTypeAlreadyRegistered,
    UnsupportedMessageType,
    UpcasterAlreadyRegistered,
)
from ..bus._envelope import Envelope
from ..bus._messages import (
    Identity,
    Request,
    checked_version,
    describe,
    short_repr,
    type_name,
    type_version,
)
from ..bus._module import EventBinding, Module, RequestBinding

#: An upcaster: the unstructured body of version ``v`` in, that of ``v + 1`` out.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: At most this many characters of a cattrs explanation go into an error.
EXPLANATION_LIMIT: Final = 600

# ---------------------------------------------------------------- limits


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Limits.{attribute.name} must be a whole number >= 1, got {short_repr(value)}"
        )


@final
@attrs.frozen
class Limits:
    """What a codec accepts, checked on decode and on encode alike.

    The two first defaults are 4 MiB envelopes and 128 headers.
    Lengths of names, ids and headers count characters.
    """

    #: The whole encoded envelope, in bytes (4 MiB), checked before parsing.
    max_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive_int)
    #: How many headers an envelope may carry, checked before structuring.
    max_headers: int = attrs.field(default=128, validator=_positive_int)
    #: A header's key (256 characters).
    max_header_key_length: int = attrs.field(default=256, validator=_positive_int)
    #: A header's value (8192 characters: room for a W3C ``baggage`` header).
    max_header_value_length: int = attrs.field(default=8192, validator=_positive_int)
    #: The message name and the reply-to address (256 characters; brokers
    #: cap topic and queue names near there: Kafka 249, AMQP 255 bytes).
    max_name_length: int = attrs.field(default=256, validator=_positive_int)
    #: The message, correlation and causation ids (256 characters; stores index them).
    max_id_length: int = attrs.field(default=256, validator=_positive_int)


# ---------------------------------------------------------------- the registry


def _is_message_class(cls: type) -> bool:
    return attrs.has(cls) or dataclasses.is_dataclass(cls)


def _response_type(request: type) -> type | None:
    """``R`` of the ``Request[R]`` that ``request`` derives from, when ``R`` is a message class."""
    for klass in request.__mro__:
        for base in klass.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) is Request:
                (response,) = typing.get_args(base)
                if isinstance(response, type) and _is_message_class(response):
                    return response
                return None
    return None


def _checked_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty str, got {short_repr(name)}")
    return name


@final
class MessageTypes:
    """The registry of what may travel: (message name, version) -> class.

    A class is registered under its name and version by the bus's rules
    (``message_name`` / ``message_version`` class attributes, else
    ``module.qualname`` and 1), or under the ones given. A name registered
    as a plain string (as modules bind dict messages) has no class: its
    body decodes to a ``dict`` (or, for a string body, to the ``str``
    message itself). Upcasters turn an old version's body into the next
    version's. A :class:`Codec` copies the registry when it is made.
    """

    def __init__(self) -> None:
        self._entries: dict[Identity, type | None] = {}
        self._upcasters: dict[Identity, Upcaster] = {}

    @classmethod
    def from_modules(
        cls, modules: Iterable[Module], *, responses: bool = True, also: Iterable[type] = ()
    ) -> MessageTypes:
        """A registry of every message the ``modules`` bind, under the bound identity.

        With ``responses``, the response class ``R`` of each bound
        ``Request[R]`` is registered too (when it is an attrs class or a
        dataclass), so replies can be encoded. ``also`` adds classes that
        no module binds (routed to handlers in another process), with their
        responses.

        Raises:
            MessageTypeAlreadyRegistered: two modules bind different classes
                (or a class and a name) under one name and version.
            TypeError: an item of ``modules`` is not a ``Module``.
        """
        types = cls()
        for module in modules:
            if not isinstance(module, Module):
                raise TypeError(
                    f"MessageTypes.from_modules takes Module objects, got {short_repr(module)}"
                )
            bindings: list[RequestBinding | EventBinding] = [*module.requests.values()]
            bindings += [b for subscribed in module.events.values() for b in subscribed]
            for binding in bindings:
                target = binding.target
                types._add(binding.identity, target if isinstance(target, type) else None)
                response = _response_type(target) if isinstance(target, type) else None
                if responses and response is not None:
                    types.register(response)
        for message in also:
            types.register(message)
            response = _response_type(message)
            if responses and response is not None:
                types.register(response)
        return types

    def register(
        self, message: type | str, *, name: str | None = None, version: int | None = None
    ) -> Self:
        """Allow ``message`` (a class, or a name for dict and str messages) to travel.

        Registering the same class under the same identity again does nothing.

        Raises:
            MessageTypeAlreadyRegistered: another class (or a name) holds this
                name and version.
            MessageVersionError: ``version`` (or the class's ``message_version``)
                is not a whole number >= 1.
            ValueError: a name is empty, or ``name=`` is given with a name.
            TypeError: ``message`` is neither a class nor a str.
        """
        if isinstance(message, str):
            _checked_name(message, "a message name")
            if name is not None and name != message:
                raise ValueError(
                    f"register({message!r}) registers that name; name={short_repr(name)} "
                    "applies to classes only"
                )
            identity = (message, 1 if version is None else checked_version(version, "version="))
            entry: type | None = None
        elif isinstance(message, type):
            own = type_name(message) if name is None else _checked_name(name, "name=")
            at = type_version(message) if version is None else checked_version(version, "version=")
            identity, entry = (own, at), message
        else:
            raise TypeError(
                f"register a message class or a message name (str), not {short_repr(message)}"
            )
        self._add(identity, entry)
        return self

    def _add(self, identity: Identity, entry: type | None) -> None:
        if identity in self._entries and self._entries[identity] is not entry:
            held = self._entries[identity]
            raise MessageTypeAlreadyRegistered(
                f"{short_repr(identity[0])} version {identity[1]} is already registered as "
                f"{_label(held)}, so it cannot also be {_label(entry)}: give one of them "
                "another message_name or message_version"
            )
        self._entries[identity] = entry

    def upcaster(self, name: str, from_version: int, fn: Upcaster) -> Self:
        """Register ``fn``, which turns the body of ``name`` version ``from_version``
        into the body of version ``from_version + 1`` (unstructured dicts both).

        Decoding an old version with no class of its own runs the chain of
        upcasters toward the newest registered version of ``name``.

        Raises:
            UpcasterAlreadyRegistered: this step already has an upcaster.
            MessageVersionError: ``from_version`` is not a whole number >= 1.
            TypeError: ``fn`` is not callable.
        """
        _checked_name(name, "the upcaster's message name")
        step = (name, checked_version(from_version, "from_version"))
        if not callable(fn):
            raise TypeError(f"an upcaster is a function dict -> dict, not {short_repr(fn)}")
        if step in self._upcasters:
            raise UpcasterAlreadyRegistered(
                f"{name!r} already has an upcaster from version {from_version} to "
                f"{from_version + 1}: register one function per step"
            )
        self._upcasters[step] = fn
        return self

    def registered(self, name: str, version: int) -> type | None:
        """The class registered for ``name`` and ``version``: ``dict`` for a name
        registered as a string, ``None`` when nothing is registered."""
        entry = self._entries.get((name, version), _ABSENT)
        if entry is _ABSENT:
            return None
        return dict if entry is None else typing.cast(type, entry)

    def versions(self, name: str) -> tuple[int, ...]:
        """The versions registered for ``name``, oldest first."""
        return tuple(sorted(v for n, v in self._entries if n == name))

    def tables(self) -> tuple[dict[Identity, type | None], dict[Identity, Upcaster]]:
        """Copies of the entries (``None`` for a name) and the upcasters (by step)."""
        return dict(self._entries), dict(self._upcasters)

    def __repr__(self) -> str:
        return f"<MessageTypes types={len(self._entries)} upcasters={len(self._upcasters)}>"


_ABSENT: Final = object()


def _label(entry: type | None) -> str:
    return "a name (dict and str messages)" if entry is None else f"class {describe(entry)}"


# ---------------------------------------------------------------- the envelope's fields


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"got {type(value).__name__}")
    return value


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"got {type(value).__name__}")
    return value


def _strict_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError("not finite")
    return float(value)


@attrs.frozen
class _Meta:
    """The envelope's fields on the wire, all but the body (in wire order)."""

    id: str
    name: str
    version: int
    correlation_id: str
    causation_id: str | None
    reply_to: str | None
    created_at: float
    headers: dict[str, str]


# A converter of its own, strict on primitives (cattrs would turn 5 into "5"):
# a field of the wrong type is a malformed envelope, not a guess.
_meta_converter = cattrs.Converter()
_meta_converter.register_structure_hook(str, _strict_str)
_meta_converter.register_structure_hook(int, _strict_int)
_meta_converter.register_structure_hook(float, _strict_float)
_structure_meta = _meta_converter.get_structure_hook(_Meta)


def _plain_meta(doc: dict[str, Any]) -> _Meta | None:
    """The envelope's fields when each has exactly its plain type, else ``None``.

    The common case, checked without the converter (a third of a codec
    call): every value this accepts, the strict converter accepts and
    structures to the same :class:`_Meta`; anything else (a subclass, an int
    ``created_at``, a missing field) takes the converter's path and its errors.
    """
    try:
        message_id = doc["id"]
        name = doc["name"]
        version = doc["version"]
        correlation_id = doc["correlation_id"]
        causation_id = doc["causation_id"]
        reply_to = doc["reply_to"]
        created_at = doc["created_at"]
        headers = doc["headers"]
    except KeyError:
        return None
    if not (
        type(message_id) is str
        and type(name) is str
        and type(version) is int
        and type(correlation_id) is str
        and (causation_id is None or type(causation_id) is str)
        and (reply_to is None or type(reply_to) is str)
        and type(created_at) is float
        and math.isfinite(created_at)
        and type(headers) is dict
    ):
        return None
    for key, value in headers.items():
        if type(key) is not str or type(value) is not str:
            return None
    return _Meta(
        message_id,
        name,
        version,
        correlation_id,
        causation_id,
        reply_to,
        created_at,
        dict(headers),
    )


def _format_exception(exc: BaseException, type_: type | None) -> str:
    text = cattrs.v.format_exception(exc, type_)
    detail = str(exc)
    if isinstance(exc, KeyError) or not detail or detail in text:
        return text
    return f"{text} ({detail[:120]})"


def _explain(exc: Exception, path: str) -> str:
    """cattrs' explanation of a structure error, capped at :data:`EXPLANATION_LIMIT`."""
    if isinstance(exc, cattrs.BaseValidationError):
        text = "; ".join(cattrs.transform_error(exc, path=path, format_exception=_format_exception))
    else:
        text = f"{type(exc).__name__}: {exc} @ {path}"
    if len(text) > EXPLANATION_LIMIT:
        return f"{text[:EXPLANATION_LIMIT]}... ({len(text)} chars)"
    return text


# A cheap look at the first bytes for the id, when the whole cannot be parsed.
_ID_PREFIX = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"((?:[^"\\\x00-\x1f]|\\.)*)"')


def _peek_id(data: bytes | bytearray | memoryview, max_length: int) -> str | None:
    """The ``"id"`` at the start of ``data``, read from its first bytes only."""
    match = _ID_PREFIX.match(bytes(data[: 6 * max_length + 64]))
    if match is None:
        return None
    try:
        found = orjson.loads(b'"' + match.group(1) + b'"')
    except orjson.JSONDecodeError:
        return None
    return _usable_id(found, max_length)


def _usable_id(value: object, max_length: int) -> str | None:
    """``value`` when it can name an envelope in errors and dead letters: an id
    within the limit, without a NUL character (see :meth:`Codec._check_lengths`).
    """
    if isinstance(value, str) and len(value) <= max_length and "\x00" not in value:
        return value
    return None


@final
@attrs.frozen
class _Side:
    """Who fails and how: the verb and the id, for error text."""

    verb: str
    message_id: str | None

    def error(self, reason: str, text: str) -> EnvelopeError:
        who = (
            f"envelope {short_repr(self.message_id)}"
            if self.message_id is not None
            else "an envelope (id unreadable)"
        )
        return ENVELOPE_REASONS[reason](
            f"cannot {self.verb} {who} [{reason}]: {text}",
            reason=reason,
            message_id=self.message_id,
        )


# ---------------------------------------------------------------- the codec


@final
@attrs.frozen
class _Entry:
    cls: type | None
    structure: Callable[[Any, Any], Any] | None
    unstructure: Callable[[Any], Any] | None


@final
@attrs.frozen
class _Plan:
    """How one (name, version) decodes: upcast by ``steps``, then build ``entry``."""

    entry: _Entry
    version: int
    steps: tuple[tuple[int, Upcaster], ...]


@final
class Codec:
    """Writes envelopes as bytes and reads them back, by a :class:`MessageTypes` registry.

    ``converter`` (``cattrs.preconf.orjson.make_converter()`` by default)
    unstructures and structures message bodies; give one with hooks of your
    own for types cattrs does not know. The codec copies ``types`` when it
    is made: register first.

    Raises:
        UnsupportedMessageType: the converter cannot structure a registered class.
    """

    def __init__(
        self,
        types: MessageTypes,
        *,
        limits: Limits = Limits(),
        converter: cattrs.BaseConverter | None = None,
    ) -> None:
        if not isinstance(types, MessageTypes):
            raise TypeError(f"Codec takes a MessageTypes registry, got {short_repr(types)}")
        if not isinstance(limits, Limits):
            raise TypeError(f"limits= takes a Limits, got {short_repr(limits)}")
        self.limits = limits
        self._converter = make_converter() if converter is None else converter
        entries, self._upcasters = types.tables()
        self._entries = {identity: self._entry(cls) for identity, cls in entries.items()}
        self._newest: dict[str, int] = {}
        for name, version in entries:
            self._newest[name] = max(version, self._newest.get(name, 0))
        self._plans: dict[Identity, _Plan] = {}

    def _entry(self, cls: type | None) -> _Entry:
        if cls is None:
            return _Entry(None, None, None)
        try:
            structure = self._converter.get_structure_hook(cls)
        except StructureHandlerNotFoundError as exc:
            raise UnsupportedMessageType(
                f"the codec's converter cannot structure {describe(cls)}: make it an attrs "
                "class or a dataclass, or register hooks for it on the converter passed "
                "as Codec(converter=...)"
            ) from exc
        return _Entry(cls, structure, self._converter.get_unstructure_hook(cls))

    # ------------------------------------------------------------ encode

    def encode(self, envelope: Envelope) -> bytes:
        """``envelope`` as the bytes of its wire form.

        Refuses what :meth:`decode` would refuse, with the same errors.

        Raises:
            MalformedEnvelope: a field of the envelope has the wrong type, or an id
                holds a NUL character.
            OversizeEnvelope: over a limit (bytes, header count or length, name, id).
            UnknownMessage: its name and version are not registered.
            InvalidBody: the message is not of the registered class (``"wrong_type"``),
                or cannot be unstructured or written as JSON (``"unserializable"``).
        """
        if not isinstance(envelope, Envelope):
            raise TypeError(f"Codec.encode takes an Envelope, got {short_repr(envelope)}")
        side = _Side("encode", self._readable_id(envelope.message_id))
        headers = envelope.headers
        doc: dict[str, Any] = {
            "id": envelope.message_id,
            "name": envelope.message_name,
            "version": envelope.message_version,
            "correlation_id": envelope.correlation_id,
            "causation_id": envelope.causation_id,
            "reply_to": envelope.reply_to,
            "created_at": envelope.created_at,
            "headers": dict(headers) if isinstance(headers, Mapping) else headers,
        }
        meta = self._checked_meta(doc, side)
        entry = self._entries.get((meta.name, meta.version))
        if entry is None:
            raise side.error(
                "unknown_message",
                f"{meta.name!r} version {meta.version} is not registered, so no codec with "
                "this registry could decode it: register the class with "
                "MessageTypes.register, or bind it in a module and build the registry "
                "with MessageTypes.from_modules",
            )
        doc["body"] = self._body(entry, envelope.message, meta, side)
        try:
            data = orjson.dumps(doc)
        except orjson.JSONEncodeError as exc:
            raise side.error(
                "unserializable",
                f"the message cannot be written as JSON ({exc}): give the converter a hook "
                "that unstructures it to JSON types",
            ) from exc
        if len(data) > self.limits.max_bytes:
            raise side.error(
                "oversize",
                f"it is {len(data)} bytes encoded, over Limits.max_bytes "
                f"({self.limits.max_bytes}), which a receiving codec refuses: send a "
                "smaller message (a reference to the data instead of the data), or raise "
                "the limit on both sides",
            )
        return data

    def _body(self, entry: _Entry, message: object, meta: _Meta, side: _Side) -> Any:
        if entry.cls is None:
            if isinstance(message, str):
                return message
            if not isinstance(message, Mapping):
                raise side.error(
                    "wrong_type",
                    f"{meta.name!r} version {meta.version} is registered as a name, for "
                    f"dict and str messages, but the message is a {describe(type(message))}",
                )
            message = dict(message)
        elif type(message) is not entry.cls:
            raise side.error(
                "wrong_type",
                f"{meta.name!r} version {meta.version} is registered as "
                f"{describe(entry.cls)}, but the message is a {describe(type(message))}: "
                "register its class under its own name and version",
            )
        try:
            if entry.unstructure is None:
                return self._converter.unstructure(message)
            return entry.unstructure(message)
        except Exception as exc:
            raise side.error(
                "unserializable",
                f"the converter cannot unstructure the message ({type(exc).__name__}: "
                f"{str(exc)[:200]}): register an unstructure hook for its types",
            ) from exc

    # ------------------------------------------------------------ decode

    def decode(self, data: bytes | bytearray | memoryview) -> Envelope:
        """The envelope written in ``data``.

        Classes come from the registry only; an old version with no class of
        its own is upcast toward the newest registered one, and the envelope
        then carries the version it was decoded as. A name registered as a
        string decodes to a ``dict`` carrying ``"message_name"`` and
        ``"message_version"`` (or to the ``str`` message, for a string body).

        Raises:
            OversizeEnvelope: over a limit; over ``max_bytes`` is refused before parsing.
            MalformedEnvelope: not a JSON object with the envelope's fields, or an id
                holds a NUL character.
            UnknownMessage: no type is registered under its name.
            UnsupportedVersion: its version is newer than the newest registered
                (``"version_too_new"``), or has no class and no upcaster path to one
                (``"missing_upcaster"``).
            InvalidBody: the body does not fit the class (``"invalid_body"``), or
                an upcaster failed (``"upcaster_failed"``).
        """
        raw = self._buffer(data)
        if len(raw) > self.limits.max_bytes:
            side = _Side("decode", _peek_id(raw, self.limits.max_id_length))
            raise side.error(
                "oversize",
                f"it is {len(raw)} bytes, over Limits.max_bytes ({self.limits.max_bytes}), "
                "so it was refused unparsed: raise the limit on both sides if such "
                "messages are expected",
            )
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            side = _Side("decode", _peek_id(raw, self.limits.max_id_length))
            raise side.error(
                "malformed", f"it is not JSON ({exc}): these bytes were not written by a Codec"
            ) from exc
        if not isinstance(doc, dict):
            raise _Side("decode", None).error(
                "malformed",
                f"it is a JSON {type(doc).__name__}, not an object: these bytes were not "
                "written by a Codec",
            )
        side = _Side("decode", self._readable_id(doc.get("id")))
        meta = self._checked_meta(doc, side)
        if "body" not in doc:
            raise side.error("malformed", "it has no 'body': the message is missing")
        plan = self._plan(meta.name, meta.version, side)
        return Envelope(
            message_id=meta.id,
            message_name=meta.name,
            message_version=plan.version,
            correlation_id=meta.correlation_id,
            causation_id=meta.causation_id,
            headers=meta.headers,
            reply_to=meta.reply_to,
            created_at=meta.created_at,
            message=self._message(plan, doc["body"], meta, side),
        )

    @staticmethod
    def _buffer(data: object) -> bytes | bytearray | memoryview:
        if isinstance(data, bytes | bytearray):
            return data
        if isinstance(data, memoryview):
            return data.cast("B") if data.c_contiguous else data.tobytes()
        raise TypeError(
            f"Codec.decode takes bytes, bytearray or memoryview, got {type(data).__name__}"
        )

    def _readable_id(self, value: object) -> str | None:
        return _usable_id(value, self.limits.max_id_length)

    def _checked_meta(self, doc: dict[str, Any], side: _Side) -> _Meta:
        """The envelope's fields, type-checked and within the limits."""
        meta = _plain_meta(doc)
        if meta is None:
            headers = doc.get("headers")
            if isinstance(headers, Mapping):
                self._check_header_count(len(headers), side)
            meta = self._structured_meta(doc, side)
        else:
            self._check_header_count(len(meta.headers), side)
        if meta.version < 1:
            raise side.error(
                "malformed", f"its version is {meta.version}: a version is a whole number >= 1"
            )
        self._check_lengths(meta, side)
        return meta

    def _check_header_count(self, count: int, side: _Side) -> None:
        if count > self.limits.max_headers:
            raise side.error(
                "too_many_headers",
                f"it has {count} headers, over Limits.max_headers "
                f"({self.limits.max_headers}): carry fewer headers, or raise the limit on both "
                "sides",
            )

    @staticmethod
    def _structured_meta(doc: dict[str, Any], side: _Side) -> _Meta:
        try:
            meta: _Meta = _structure_meta(doc, _Meta)
        except Exception as exc:
            raise side.error(
                "malformed",
                f"its fields do not fit an envelope: {_explain(exc, '$')}. Ids and names are "
                "str, the version an int >= 1, created_at a number, headers str to str",
            ) from exc
        return meta

    def _check_lengths(self, meta: _Meta, side: _Side) -> None:
        limits = self.limits
        for field, value in (("the message name", meta.name), ("reply_to", meta.reply_to)):
            if value is not None and len(value) > limits.max_name_length:
                raise side.error(
                    "name_too_long",
                    f"{field} {short_repr(value)} is {len(value)} characters, over "
                    f"Limits.max_name_length ({limits.max_name_length}): use a shorter one",
                )
        ids = (("id", meta.id), ("correlation_id", meta.correlation_id))
        for field, value in (*ids, ("causation_id", meta.causation_id)):
            if value is not None and len(value) > limits.max_id_length:
                raise side.error(
                    "id_too_long",
                    f"its {field} is {len(value)} characters, over Limits.max_id_length "
                    f"({limits.max_id_length}): use shorter ids",
                )
            if value is not None and "\x00" in value:
                # Durable stores keep ids in text columns, which hold no NUL on PostgreSQL.
                raise side.error(
                    "malformed",
                    f"its {field} {short_repr(value)} contains a NUL character, which no "
                    "store can keep: use ids without NUL characters",
                )
        for key, value in meta.headers.items():
            for part, text, most in (
                ("key", key, limits.max_header_key_length),
                ("value", value, limits.max_header_value_length),
            ):
                if len(text) > most:
                    raise side.error(
                        "header_too_long",
                        f"the {part} of its header {short_repr(key)} is {len(text)} "
                        f"characters, over {most} (Limits.max_header_{part}_length): "
                        "carry less in headers, or raise the limit on both sides",
                    )

    def _plan(self, name: str, version: int, side: _Side) -> _Plan:
        """How ``name`` at ``version`` decodes (cached once found: only registered
        versions and those an upcaster chain serves are kept, never a payload's whim)."""
        plan = self._plans.get((name, version))
        if plan is None:
            plan = self._plans[(name, version)] = self._find_plan(name, version, side)
        return plan

    def _find_plan(self, name: str, version: int, side: _Side) -> _Plan:
        entry = self._entries.get((name, version))
        if entry is not None:
            return _Plan(entry, version, ())
        newest = self._newest.get(name)
        if newest is None:
            raise side.error(
                "unknown_message",
                f"no message type is registered under the name {short_repr(name)}: register "
                "the class with MessageTypes.register, or bind it in a module and build the "
                "registry with MessageTypes.from_modules",
            )
        if version > newest:
            raise side.error(
                "version_too_new",
                f"{short_repr(name)} version {version} is newer than the newest this codec "
                f"knows (version {newest}): upgrade this consumer (register the class of "
                f"version {version}) before producers send it",
            )
        steps: list[tuple[int, Upcaster]] = []
        found: _Plan | None = None
        at = version
        while at < newest and (name, at) in self._upcasters:
            steps.append((at, self._upcasters[(name, at)]))
            at += 1
            if (name, at) in self._entries:
                found = _Plan(self._entries[(name, at)], at, tuple(steps))
        if found is None:
            raise side.error(
                "missing_upcaster",
                f"{short_repr(name)} version {version} has no class of its own and no upcaster "
                f"path to a registered version ({self._versions(name)}): the step from "
                f"version {at} to {at + 1} is missing; register it with "
                f"MessageTypes.upcaster({name!r}, {at}, fn), or a class for version {version}",
            )
        return found

    def _versions(self, name: str) -> str:
        return ", ".join(str(v) for n, v in sorted(self._entries) if n == name)

    def _message(self, plan: _Plan, body: Any, meta: _Meta, side: _Side) -> Any:
        body = self._upcast(plan, body, meta, side)
        entry = plan.entry
        if entry.cls is None or entry.structure is None:
            if isinstance(body, str) and not plan.steps:
                return body
            if isinstance(body, dict):
                body["message_name"] = meta.name
                body["message_version"] = plan.version
                return body
            raise side.error(
                "invalid_body",
                f"{meta.name!r} is registered as a name, whose body is a JSON object (a dict "
                f"message) or a string, but this body is a {type(body).__name__}",
            )
        try:
            return entry.structure(body, entry.cls)
        except Exception as exc:
            raise side.error(
                "invalid_body",
                f"the body does not fit {describe(entry.cls)} (version {plan.version}): "
                f"{_explain(exc, '$.body')}. Register an upcaster if the sender's version "
                "differs, or fix the sender",
            ) from exc

    def _upcast(self, plan: _Plan, body: Any, meta: _Meta, side: _Side) -> Any:
        if plan.steps and not isinstance(body, dict):
            raise side.error(
                "invalid_body",
                f"the body of {meta.name!r} version {meta.version} is a {type(body).__name__}, "
                "but upcasting it needs a JSON object",
            )
        for from_version, upcast in plan.steps:
            try:
                body = upcast(body)
            except Exception as exc:
                raise side.error(
                    "upcaster_failed",
                    f"the upcaster of {meta.name!r} from version {from_version} to "
                    f"{from_version + 1} raised {type(exc).__name__}: {str(exc)[:200]}",
                ) from exc
            if not isinstance(body, dict):
                raise side.error(
                    "upcaster_failed",
                    f"the upcaster of {meta.name!r} from version {from_version} to "
                    f"{from_version + 1} returned a {type(body).__name__}, not a dict",
                )
        return body

    def __repr__(self) -> str:
        return f"<Codec types={len(self._entries)} max_bytes={self.limits.max_bytes}>"
