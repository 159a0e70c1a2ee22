"""Well-formed names and text, as docs/FORMAT.md "Names and text" defines them, for the auditor.

The auditor's own implementation (it imports nothing from the ledger): namespaces are DNS-1123
labels (at most 63 characters), Deployment names DNS-1123 subdomains (at most 253), principals
``kind:name`` with a name of 1 to 200 ASCII letters, digits and ``. _ @ + -`` starting with a
letter or digit, and free text holds no character of the Unicode categories Cc, Cf, Cs, Zl or
Zp, prose (reasons, rationale, comments) at most 4096 characters and every other text field at
most 512. :func:`problems` lists what an event payload breaks, as (code, field, message).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from audit.formats import (
    ApprovalRecorded,
    EvalRecorded,
    HealthReported,
    KeyGranted,
    KeyRevoked,
    KillSwitchEngaged,
    KillSwitchReleased,
    LedgerGenesis,
    PolicySet,
    ProposalSubmitted,
    RolloutPaused,
    RolloutResumed,
    RolloutStep,
)

LABEL_MAX, SUBDOMAIN_MAX, PRINCIPAL_NAME_MAX = 63, 253, 200
PROSE_MAX, TEXT_MAX = 4096, 512
_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_PRINCIPAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]*")
_KINDS = ("human", "agent", "service")
_BANNED = ("Cc", "Cf", "Cs", "Zl", "Zp")

Problem = tuple[str, str, str]  # (NAME_INVALID or TEXT_INVALID, field, what is wrong)


def is_namespace(value: str) -> bool:
    return len(value) <= LABEL_MAX and _LABEL.fullmatch(value) is not None


def is_deployment(value: str) -> bool:
    return len(value) <= SUBDOMAIN_MAX and all(_LABEL.fullmatch(p) for p in value.split("."))


def is_principal_name(principal: str) -> bool:
    name = principal.partition(":")[2]
    return len(name) <= PRINCIPAL_NAME_MAX and _PRINCIPAL_NAME.fullmatch(name) is not None


def text_fault(value: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"{len(value)} characters, over the cap of {limit}"
    # str.isprintable is False for every banned category (and for Zs, Co, Cn too), so a
    # printable value needs no per-character look; this was 10% of an audit (cProfile, 200k).
    if value.isprintable():
        return None
    for i, c in enumerate(value):
        if unicodedata.category(c) in _BANNED:
            return f"control or invisible character U+{ord(c):04X} at position {i}"
    return None


def printable(text: str) -> str:
    """`text` with control and invisible characters written as escapes (``\\n``, ``\\u202e``):
    what the reports show, so a stored value, even one these rules now refuse, stays on its line."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _BANNED else c
        for c in text
    )


def _fields(p: Any) -> list[tuple[str, str, str]]:
    """(field, kind of check, value) for each name and text field of payload `p`."""
    t, out = type(p), []
    if t is LedgerGenesis:
        out += [
            ("origin", "text", p.origin),
            ("checkpoint_key_name", "text", p.checkpoint_key_name),
        ]
        out += [(f"roots[{i}].principal", "principal", r.principal) for i, r in enumerate(p.roots)]
    elif t is KeyGranted:
        out.append(("principal", "principal", p.principal))
    elif t is KeyRevoked:
        out.append(("reason", "prose", p.reason))
    elif t is PolicySet:
        out += [
            ("policy_id", "text", p.policy_id),
            ("selector.namespace", "namespace*", p.selector.namespace),
            ("selector.deployment", "deployment*", p.selector.deployment),
        ]
        for i, r in enumerate(p.required_evals):
            out += [
                (f"required_evals[{i}].suite", "text", r.suite),
                (f"required_evals[{i}].metric", "text", r.metric),
            ]
        for i, c in enumerate(p.analysis):
            out += [
                (f"analysis[{i}].name", "text", c.name),
                (f"analysis[{i}].query", "prose", c.query),
            ]
        if p.container is not None:
            out.append(("container", "container", p.container))
    elif t is ProposalSubmitted:
        out += [
            ("target.namespace", "namespace", p.target.namespace),
            ("target.deployment", "deployment", p.target.deployment),
            ("candidate.image", "text", p.candidate.image),
            ("candidate.model_digest", "text", p.candidate.model_digest),
            ("baseline.image", "text", p.baseline.image),
            ("baseline.model_digest", "text", p.baseline.model_digest),
            ("rationale", "prose", p.rationale),
            ("origin.agent", "text", p.origin.agent),
            ("origin.run", "text", p.origin.run),
        ]
    elif t is EvalRecorded:
        out.append(("suite", "text", p.suite))
        out += [(f"metrics[{i}].name", "text", m.name) for i, m in enumerate(p.metrics)]
        out.append(("artifact_digest", "text", p.artifact_digest))
    elif t is ApprovalRecorded:
        out.append(("comment", "prose", p.comment))
    elif t is HealthReported:
        out += [(f"metrics[{i}].name", "text", m.name) for i, m in enumerate(p.metrics)]
        for i, ev in enumerate(p.checks):
            out += [
                (f"checks[{i}].name", "text", ev.name),
                (f"checks[{i}].query", "prose", ev.query),
            ]
            out += [
                (f"checks[{i}].samples[{j}].detail", "text", sample.detail)
                for j, sample in enumerate(ev.samples)
            ]
    elif t is RolloutStep:
        out += [
            ("reason", "prose", p.reason),
            ("observed.stable_image", "text", p.observed.stable_image),
            ("observed.canary_image", "text", p.observed.canary_image),
        ]
    elif t is KillSwitchEngaged or t is KillSwitchReleased:
        out += [
            ("scope.namespace", "namespace", p.scope.namespace),
            ("scope.deployment", "deployment", p.scope.deployment),
            ("reason", "prose", p.reason),
        ]
        annotation = getattr(p, "annotation", None)
        if annotation is not None:
            out += [
                ("annotation.object", "text", annotation.object),
                ("annotation.field_manager", "text", annotation.field_manager),
                ("annotation.time", "text", annotation.time),
            ]
    elif t is RolloutPaused or t is RolloutResumed:
        out.append(("reason", "prose", p.reason))
    return out


def _health_report_is_clean(p: HealthReported) -> bool:
    """True when every text field of a health report passes text_fault: the common case,
    answered without building _fields' (field, check, value) list and its formatted field
    names. Health reports are most of a log, and that list was 10% of an audit's Python work
    per entry (cProfile, 200,000 events, 2026-12-07). False sends problems() down the
    general path, which names what is wrong; tests/unit/test_audit_names.py holds the two to
    the same answer field by field."""
    for m in p.metrics:
        if len(m.name) > TEXT_MAX or not m.name.isprintable():
            return False
    for ev in p.checks:
        if len(ev.name) > TEXT_MAX or not ev.name.isprintable():
            return False
        if len(ev.query) > PROSE_MAX or not ev.query.isprintable():
            return False
        for sample in ev.samples:
            if len(sample.detail) > TEXT_MAX or not sample.detail.isprintable():
                return False
    return True


def problems(payload: Any) -> list[Problem]:
    """What is malformed among `payload`'s names and text (empty when nothing is).

    An empty name is left to the type rules ("required"), as is a principal of unknown kind
    (FIELD_INVALID); a selector may also be the wildcard ``*``."""
    if type(payload) is HealthReported and _health_report_is_clean(payload):
        return []
    return _general_problems(payload)


def _general_problems(payload: Any) -> list[Problem]:
    """problems() for any payload, field by field."""
    found: list[Problem] = []
    for name, check, value in _fields(payload):
        fld = "payload." + name
        if check in ("namespace", "namespace*", "deployment", "deployment*"):
            if not value or (check.endswith("*") and value == "*"):
                continue
            if check.startswith("namespace") and not is_namespace(value):
                found.append(("NAME_INVALID", fld, f"namespace {value!r} is not a DNS-1123 label"))
            elif check.startswith("deployment") and not is_deployment(value):
                found.append(
                    ("NAME_INVALID", fld, f"Deployment name {value!r} is not a DNS-1123 subdomain")
                )
        elif check == "container":  # a Kubernetes container name: a DNS-1123 label
            if not is_namespace(value):
                found.append(
                    ("NAME_INVALID", fld, f"container name {value!r} is not a DNS-1123 label")
                )
        elif check == "principal":
            if value.partition(":")[0] in _KINDS and ":" in value and not is_principal_name(value):
                found.append(
                    (
                        "NAME_INVALID",
                        fld,
                        f"principal {value!r} is not kind:name with the documented characters",
                    )
                )
        else:
            fault = text_fault(value, PROSE_MAX if check == "prose" else TEXT_MAX)
            if fault is not None:
                found.append(("TEXT_INVALID", fld, f"free text with {fault}"))
    return found
