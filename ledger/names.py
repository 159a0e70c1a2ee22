"""Well-formed names and text: what a namespace, a Deployment name, a principal and free text
may hold (docs/FORMAT.md "Names and text").

Pure functions, each returning None for a good value or one sentence saying what is wrong (the
caller names the field). The rules (:mod:`ledger.rules`) call them on every event; the auditor
has its own copy of the same definitions (``audit.names``), as it shares no code with the ledger.

* **namespace**: a DNS-1123 label, as Kubernetes validates ``metadata.namespace``: at most 63
  characters, lower-case ASCII letters, digits and ``-``, starting and ending alphanumeric.
* **Deployment name**: a DNS-1123 subdomain, as Kubernetes validates ``metadata.name`` of a
  Deployment: at most 253 characters, dot-separated DNS-1123 labels.
* **principal**: ``kind:name``, kind one of human, agent, service; name 1 to 200 characters of
  ASCII letters, digits and ``. _ @ + -``, starting with a letter or digit. Case is kept and
  matters (``human:Alice`` and ``human:alice`` are two principals).
* **free text** (reasons, rationale, comments, suite and metric names, images, digests...):
  no control character (Unicode Cc: C0, DEL, C1), no line or paragraph separator (Zl, Zp), no
  invisible format character (Cf: bidirectional overrides, zero-width characters), no lone
  surrogate (Cs); prose at most :data:`PROSE_MAX` characters, the other fields at most
  :data:`LABEL_MAX`. So nothing stored can start a new line, move the cursor or reorder what a
  reader sees in a terminal, a log or a report.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import NamedTuple

from ledger.model import (
    PRINCIPAL_KINDS,
    ApprovalRecorded,
    EvalRecorded,
    HealthReported,
    KeyGranted,
    KeyRevoked,
    KillScope,
    KillSwitchEngaged,
    KillSwitchReleased,
    LedgerGenesis,
    Payload,
    PolicySet,
    ProposalSubmitted,
    RolloutPaused,
    RolloutResumed,
    RolloutStep,
)

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
PRINCIPAL_NAME_MAX = 200
PROSE_MAX = 4096  # reasons, rationale, comments
LABEL_MAX = 512  # every other text field: suite and metric names, images, digests, run ids...


_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PRINCIPAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]*")
# Unicode general categories no stored text may contain (see the module docstring).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def dns1123_label_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 label (a Kubernetes namespace), or None."""
    if len(value) > DNS1123_LABEL_MAX:
        return f"is {len(value)} characters, a DNS-1123 label has at most {DNS1123_LABEL_MAX}"
    if not _DNS1123_LABEL.fullmatch(value):
        return (
            f"{value!r} is not a DNS-1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit)"
        )
    return None


def dns1123_subdomain_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 subdomain (a Kubernetes Deployment name), or None."""
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return (
            f"is {len(value)} characters, a DNS-1123 subdomain has at most {DNS1123_SUBDOMAIN_MAX}"
        )
    if not all(_DNS1123_LABEL.fullmatch(part) for part in value.split(".")):
        return (
            f"{value!r} is not a DNS-1123 subdomain (dot-separated labels of lower-case "
            "letters, digits and '-', each starting and ending with a letter or digit)"
        )
    return None


def principal_kind(principal: str) -> str | None:
    """The kind (human, agent, service) a principal names before its ':', or None."""
    kind, colon, _name = principal.partition(":")
    return kind if colon and kind in PRINCIPAL_KINDS else None


def principal_name_problem(principal: str) -> str | None:
    """Why the name part of a ``kind:name`` principal is not well formed, or None.

    Checks the name only: an unknown kind is the caller's own finding (the kind is an enum)."""
    name = principal.partition(":")[2]
    if len(name) > PRINCIPAL_NAME_MAX:
        return f"the name is {len(name)} characters, at most {PRINCIPAL_NAME_MAX} are allowed"
    if not _PRINCIPAL_NAME.fullmatch(name):
        return (
            f"{principal!r}: the name after 'kind:' must be ASCII letters, digits and "
            "'. _ @ + -', starting with a letter or digit"
        )
    return None


def text_problem(value: str, limit: int = LABEL_MAX) -> str | None:
    """Why `value` is not acceptable free text of at most `limit` characters, or None."""
    if len(value) > limit:
        return f"is {len(value)} characters, at most {limit} are allowed"
    if value.isprintable():  # the common case: no Cc, Cf, Cs, Zl, Zp (nor other separators)
        return None
    for i, c in enumerate(value):
        if unicodedata.category(c) in _FORBIDDEN_CATEGORIES:
            return (
                f"holds the control or invisible character U+{ord(c):04X} at position {i}; "
                "free text may not hold control characters"
            )
    return None


def printable(text: str) -> str:
    """`text` with each control or invisible character written as its escape (``\\n``,
    ``\\x1b``, ``\\u202e``): what every printer shows, so that stored data, even from a ledger
    older than these rules, cannot start a line, move the cursor or reorder what is read."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii")
        if unicodedata.category(c) in _FORBIDDEN_CATEGORIES
        else c
        for c in text
    )


# --------------------------------------------------------------------------------------------
# Every name and text field of an event payload

NAME_INVALID = "NAME_INVALID"
TEXT_INVALID = "TEXT_INVALID"


class Problem(NamedTuple):
    code: str  # NAME_INVALID or TEXT_INVALID
    field: str  # e.g. "payload.target.deployment"
    message: str


def _namespace(fld: str, value: str, wildcard: bool = False) -> Problem | None:
    if not value or (wildcard and value == "*"):
        return None  # a required but empty value is the type rules' own finding
    problem = dns1123_label_problem(value)
    return None if problem is None else Problem(NAME_INVALID, fld, "namespace " + problem)


def _deployment(fld: str, value: str, wildcard: bool = False) -> Problem | None:
    if not value or (wildcard and value == "*"):
        return None
    problem = dns1123_subdomain_problem(value)
    return None if problem is None else Problem(NAME_INVALID, fld, "Deployment name " + problem)


def _container(fld: str, value: str | None) -> Problem | None:
    if value is None:
        return None
    # Kubernetes checks a container's name as a DNS-1123 label; an empty one is refused here,
    # since null (not "") is how a policy says "the pod's first container".
    problem = dns1123_label_problem(value) if value else "is empty (null names the first)"
    return None if problem is None else Problem(NAME_INVALID, fld, "container name " + problem)


def _principal(fld: str, value: str) -> Problem | None:
    if principal_kind(value) is None:
        return None  # an unknown kind is the type rules' own finding (INVALID_FIELD)
    problem = principal_name_problem(value)
    return None if problem is None else Problem(NAME_INVALID, fld, problem)


def _text(fld: str, value: str, limit: int = LABEL_MAX) -> Problem | None:
    problem = text_problem(value, limit)
    return None if problem is None else Problem(TEXT_INVALID, fld, problem)


def _scope(scope: KillScope) -> Iterator[Problem | None]:
    yield _namespace("payload.scope.namespace", scope.namespace)
    yield _deployment("payload.scope.deployment", scope.deployment)


def _checks(p: Payload) -> Iterator[Problem | None]:
    """Each name and text field of `p`, checked in schema order (None where it is fine)."""
    if isinstance(p, LedgerGenesis):
        yield _text("payload.origin", p.origin)
        yield _text("payload.checkpoint_key_name", p.checkpoint_key_name)
        for i, root in enumerate(p.roots):
            yield _principal(f"payload.roots[{i}].principal", root.principal)
    elif isinstance(p, KeyGranted):
        yield _principal("payload.principal", p.principal)
    elif isinstance(p, KeyRevoked):
        yield _text("payload.reason", p.reason, PROSE_MAX)
    elif isinstance(p, PolicySet):
        yield _text("payload.policy_id", p.policy_id)
        yield _namespace("payload.selector.namespace", p.selector.namespace, wildcard=True)
        yield _deployment("payload.selector.deployment", p.selector.deployment, wildcard=True)
        for i, req in enumerate(p.required_evals):
            yield _text(f"payload.required_evals[{i}].suite", req.suite)
            yield _text(f"payload.required_evals[{i}].metric", req.metric)
        for i, hc in enumerate(p.analysis):
            yield _text(f"payload.analysis[{i}].name", hc.name)
            yield _text(f"payload.analysis[{i}].query", hc.query, PROSE_MAX)
        yield _container("payload.container", p.container)
    elif isinstance(p, ProposalSubmitted):
        yield _namespace("payload.target.namespace", p.target.namespace)
        yield _deployment("payload.target.deployment", p.target.deployment)
        for which, ref in (("candidate", p.candidate), ("baseline", p.baseline)):
            yield _text(f"payload.{which}.image", ref.image)
            yield _text(f"payload.{which}.model_digest", ref.model_digest)
        yield _text("payload.rationale", p.rationale, PROSE_MAX)
        yield _text("payload.origin.agent", p.origin.agent)
        yield _text("payload.origin.run", p.origin.run)
    elif isinstance(p, EvalRecorded):
        yield _text("payload.suite", p.suite)
        for i, m in enumerate(p.metrics):
            yield _text(f"payload.metrics[{i}].name", m.name)
        yield _text("payload.artifact_digest", p.artifact_digest)
    elif isinstance(p, ApprovalRecorded):
        yield _text("payload.comment", p.comment, PROSE_MAX)
    elif isinstance(p, HealthReported):
        for i, m in enumerate(p.metrics):
            yield _text(f"payload.metrics[{i}].name", m.name)
        for i, ev in enumerate(p.checks):
            yield _text(f"payload.checks[{i}].name", ev.name)
            yield _text(f"payload.checks[{i}].query", ev.query, PROSE_MAX)
            for j, sample in enumerate(ev.samples):
                yield _text(f"payload.checks[{i}].samples[{j}].detail", sample.detail)
    elif isinstance(p, RolloutStep):
        yield _text("payload.reason", p.reason, PROSE_MAX)
        yield _text("payload.observed.stable_image", p.observed.stable_image)
        yield _text("payload.observed.canary_image", p.observed.canary_image)
    elif isinstance(p, KillSwitchEngaged):
        yield from _scope(p.scope)
        yield _text("payload.reason", p.reason, PROSE_MAX)
        if p.annotation is not None:
            yield _text("payload.annotation.object", p.annotation.object)
            yield _text("payload.annotation.field_manager", p.annotation.field_manager)
            yield _text("payload.annotation.time", p.annotation.time)
    elif isinstance(p, KillSwitchReleased):
        yield from _scope(p.scope)
        yield _text("payload.reason", p.reason, PROSE_MAX)
    elif isinstance(p, RolloutPaused | RolloutResumed):
        yield _text("payload.reason", p.reason, PROSE_MAX)


def payload_problems(payload: Payload) -> list[Problem]:
    """Every malformed name or text field of `payload`, in schema order (empty: all fine)."""
    return [problem for problem in _checks(payload) if problem is not None]


def first_payload_problem(payload: Payload) -> Problem | None:
    """The first malformed name or text field of `payload`, or None."""
    return next((problem for problem in _checks(payload) if problem is not None), None)
