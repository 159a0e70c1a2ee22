"""Who may call what on the ledger's gRPC server: client identities, permissions, the gate.

With mutual TLS the client certificate names the caller: its subject common name and each
subject alternative name (DNS name, URI, e-mail, IP address) are its identities. An access file
(docs/API.md, "Access control") maps identities to permissions:

``append``
    ``Append``, ``AppendStream``.
``read``
    every other LedgerService call (``Read``, ``Get``, ``GetHead``, checkpoints and proofs).
``query``
    QueryService.
``admin``
    server reflection, and ``GetCheckpoint`` with ``publish_now`` (a signed checkpoint on
    demand costs the server a signature and a store write, so it is not for every reader).

Health checking needs no permission (probes, load balancers). An identity the file does not
name gets nothing: every call is PERMISSION_DENIED with the method and the missing permission
named. :class:`ServerGate` enforces this and the stream limits (:mod:`ledger.limits`) for every
service on the server, before any servicer code runs.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import yaml

from ledger.errors import ConfigError
from ledger.grpc_errors import ServiceError, abort, status_for
from ledger.limits import PenaltyBox, ReadBudget, StreamSlots

APPEND, READ, QUERY, ADMIN = "append", "read", "query", "admin"
PERMISSIONS = (APPEND, READ, QUERY, ADMIN)
PERMISSION_DENIED_CODE = "PERMISSION_DENIED"

_LEDGER = "/steward.v1.LedgerService/"
_HEALTH = "/grpc.health.v1.Health/"
_SERVICE_PERMISSION = {
    "/steward.v1.LedgerService/": READ,
    "/steward.v1.QueryService/": QUERY,
    "/grpc.reflection.v1alpha.ServerReflection/": ADMIN,
    "/grpc.reflection.v1.ServerReflection/": ADMIN,
}
_METHOD_PERMISSION = {_LEDGER + "Append": APPEND, _LEDGER + "AppendStream": APPEND}


def permission_for(method: str) -> str | None:
    """The permission a call needs; None for health checking. Unknown services need admin."""
    if method.startswith(_HEALTH):
        return None
    if method in _METHOD_PERMISSION:
        return _METHOD_PERMISSION[method]
    service = method[: method.rfind("/") + 1]
    return _SERVICE_PERMISSION.get(service, ADMIN)


def _request_needs(method: str, request: Any) -> str | None:
    """A permission one request needs beyond its method's (an on-demand checkpoint)."""
    if method == _LEDGER + "GetCheckpoint" and getattr(request, "publish_now", False):
        return ADMIN
    return None


# --------------------------------------------------------------------------------------------
# Identities


def certificate_identities(context: grpc.ServicerContext) -> tuple[str, ...]:
    """The verified client certificate's subject CN and SANs; () without a client certificate."""
    auth = context.auth_context() or {}
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if text and text not in names:
                names.append(text)
    return tuple(names)


def _peer_address(context: grpc.ServicerContext) -> str:
    """The IP address of the peer, without its port: ``ipv4:10.0.0.7:51234`` -> ``10.0.0.7``."""
    peer = context.peer() or "unknown"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rsplit(":", 1)[0]
        return host.strip("[]")
    return peer


def peer_identity(context: grpc.ServicerContext) -> str:
    """Whom limits are counted for: the certificate's first name, else the IP address.

    Ports are left out on purpose: one client opening many connections is still one peer.
    """
    names = certificate_identities(context)
    return f"cert:{names[0]}" if names else f"ip:{_peer_address(context)}"


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT listen address only accepts connections from this machine."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or 0.0.0.0 / [::] (all interfaces) parse and are not loopback


# --------------------------------------------------------------------------------------------
# The access file


@dataclass(frozen=True)
class AccessPolicy:
    """Identity -> permissions, read from one file; unknown identities get nothing."""

    grants: Mapping[str, frozenset[str]]
    source: str = ""

    def permissions(self, identities: tuple[str, ...]) -> frozenset[str]:
        found: set[str] = set()
        for name in identities:
            found |= self.grants.get(name, frozenset())
        return frozenset(found)

    @classmethod
    def parse(cls, text: str, source: str = "access file") -> AccessPolicy:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not YAML: {exc}") from exc
        if (
            not isinstance(doc, dict)
            or set(doc) != {"identities"}
            or not isinstance(doc["identities"], dict)
        ):
            raise ConfigError(
                f"{source}: expected one top-level key 'identities' mapping each "
                "certificate name (CN or SAN) to a list of permissions"
            )
        grants: dict[str, frozenset[str]] = {}
        for name, perms in doc["identities"].items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{source}: identity {name!r} is not a non-empty string")
            if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
                raise ConfigError(f"{source}: identities.{name}: expected a list of permissions")
            unknown = sorted(set(perms) - set(PERMISSIONS))
            if unknown:
                raise ConfigError(
                    f"{source}: identities.{name}: unknown permission {unknown[0]!r}; "
                    f"expected some of {', '.join(PERMISSIONS)}"
                )
            grants[name] = frozenset(perms)
        return cls(grants, source)

    @classmethod
    def load(cls, path: str | Path) -> AccessPolicy:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read access file {path}: {exc.strerror}") from exc
        return cls.parse(text, str(path))


# --------------------------------------------------------------------------------------------
# The gate: an interceptor in front of every service


# Unary calls that read history back from the store, charged to ReadBudget.
READ_METHODS = frozenset(
    _LEDGER + name for name in ("Get", "GetInclusionProof", "GetConsistencyProof")
)


class ServerGate(grpc.ServerInterceptor):  # type: ignore[misc]
    """Checks permissions (with an access policy) and takes a stream slot for every stream;
    refuses the ``AppendStream`` of a peer in the penalty box before either; charges reads of
    history to the peer's read budget.

    The checks run in the call's worker thread, before the servicer; a refused call returns at
    once, so its worker is free again in microseconds.
    """

    def __init__(
        self,
        policy: AccessPolicy | None,
        slots: StreamSlots,
        log: Any,
        penalty_box: PenaltyBox | None = None,
        reads: ReadBudget | None = None,
    ) -> None:
        self.policy = policy
        self.slots = slots
        self.log = log
        self.penalty_box = penalty_box
        self.reads = reads

    def _check(self, method: str, context: grpc.ServicerContext, request: Any) -> None:
        if self.policy is None:
            return
        needed = permission_for(method)
        extra = _request_needs(method, request) if request is not None else None
        if needed is None and extra is None:
            return
        identities = certificate_identities(context)
        held = self.policy.permissions(identities)
        for permission in (needed, extra):
            if permission is not None and permission not in held:
                who = identities[0] if identities else "a client without a certificate"
                what = (
                    f"{method} with publish_now"
                    if permission is extra and extra != needed
                    else method
                )
                raise ServiceError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{what} needs the permission {permission!r}; {who} has "
                    f"{', '.join(sorted(held)) or 'none'} in {self.policy.source}",
                    violation_code=PERMISSION_DENIED_CODE,
                    field=permission,
                )

    def _boxed(self, peer: str) -> ServiceError | None:
        """The refusal of a peer in the penalty box, None for one that is not."""
        if self.penalty_box is None:
            return None
        try:
            self.penalty_box.check(peer)
        except ServiceError as exc:
            return exc
        return None

    def _refuse(self, context: grpc.ServicerContext, exc: ServiceError) -> NoReturn:
        abort(context, status_for(exc, self.log))

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        streaming = handler.request_streaming or handler.response_streaming
        boxed_method = method == _LEDGER + "AppendStream"  # what a boxed peer loses first
        gate = self

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            reads = gate.reads if method in READ_METHODS else None

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    gate._check(method, context, request)
                    if reads is not None:  # after the permission check: a refusal costs none
                        reads.charge(peer_identity(context), method.rsplit("/", 1)[-1])
                except ServiceError as exc:
                    gate._refuse(context, exc)
                return inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )

        def admitted(request: Any, context: grpc.ServicerContext) -> str:
            """Check the call and take its stream slot; returns the peer that holds it."""
            try:
                gate._check(method, context, request)
                peer = peer_identity(context)
                boxed = gate._boxed(peer) if boxed_method else None
                if streaming:
                    gate.slots.acquire(peer, method.rsplit("/", 1)[-1])
                if boxed is not None:  # held in its slot, then refused; no batch is read
                    try:
                        box = gate.penalty_box
                        assert box is not None
                        gone = threading.Event()
                        if context.add_callback(gone.set):  # False: the call already ended
                            box.hold(peer, gone)
                    finally:
                        gate.slots.release(peer)
                    raise boxed
            except ServiceError as exc:
                gate._refuse(context, exc)
            return peer

        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                peer = admitted(request, context)
                try:
                    yield from inner_us(request, context)
                finally:
                    gate.slots.release(peer)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )

        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            def stream_stream(
                requests: Iterator[Any], context: grpc.ServicerContext
            ) -> Iterator[Any]:
                peer = admitted(None, context)
                try:
                    yield from inner_ss(requests, context)
                finally:
                    gate.slots.release(peer)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )

        inner_su = handler.stream_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            peer = admitted(None, context)
            try:
                return inner_su(requests, context)
            finally:
                gate.slots.release(peer)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
