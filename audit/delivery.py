"""A policy's delivery settings (EventBody v3), checked again for the auditor: the approvers a
resume needs, the traffic routing (a Gateway API HTTPRoute between two Services) and the
webhook sinks. Written from docs/FORMAT.md and docs/GOVERNANCE.md, sharing no code with the
ledger: a policy the ledger should have refused is a POLICY_INVALID finding here.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

from audit.formats import PolicySet

MAX_NOTIFY = 8
MAX_URL = 2048
MAX_SIGNATURES = 16  # what one event may carry (docs/FORMAT.md): more approvers never resume

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # DNS-1123 label
_SERVICE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # DNS-1035 label


def _subdomain(value: str) -> bool:
    return 0 < len(value) <= 253 and all(_LABEL.fullmatch(p) for p in value.split("."))


def _service(value: str) -> bool:
    return len(value) <= 63 and _SERVICE.fullmatch(value) is not None


def _url_ok(url: str) -> bool:
    if len(url) > MAX_URL or any(
        c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in url
    ):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and parts.password is None
    )


def delivery_problems(p: PolicySet) -> list[str]:
    """What is malformed among a policy's v3 settings (empty: fine)."""
    problems = []
    if not 1 <= p.resume_approvals <= MAX_SIGNATURES:
        problems.append(f"resume_approvals {p.resume_approvals}")
    t = p.traffic
    if t is not None:
        if not _subdomain(t.http_route):
            problems.append(f"traffic.http_route {t.http_route!r}")
        if not _service(t.stable_service) or not _service(t.canary_service):
            problems.append("traffic services (DNS-1035 labels)")
        elif t.stable_service == t.canary_service:
            problems.append("traffic services are one Service")
        if not 1 <= t.port <= 65535:
            problems.append(f"traffic.port {t.port}")
    if len(p.notify) > MAX_NOTIFY:
        problems.append(f"{len(p.notify)} notify sinks (at most {MAX_NOTIFY})")
    if len(set(p.notify)) != len(p.notify):
        problems.append("a notify sink listed twice")
    problems += [f"notify[{i}]" for i, url in enumerate(p.notify) if not _url_ok(url)]
    return problems
