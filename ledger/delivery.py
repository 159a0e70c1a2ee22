"""A policy's delivery settings (EventBody v3): how many approvers end a pause, traffic
routing through a Gateway API HTTPRoute, and the webhook sinks notified of each step.

Pure definitions the rules (:mod:`ledger.rules`) apply to every PolicySet; the auditor has
its own copy (``audit.delivery``). Each check returns None for a good policy, or the field at
fault and one sentence saying what was observed and what is expected.

Why so strict about a URL: a policy is signed and kept for ever on a log that auditors and
every controller read, so what it names is checked before it is written, not when a
controller first tries to use it; and credentials in a URL would be published with it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ledger.model import PolicySet, TrafficRouting
from ledger.names import dns1123_subdomain_problem, text_problem
from ledger.wire import MAX_SIGNATURES

MAX_NOTIFY = 8  # webhook sinks per policy
MAX_URL = 2048  # characters of one sink URL
# More approvers than one event may carry signatures could never resume a pause.
MAX_RESUME_APPROVALS = MAX_SIGNATURES

# A Service name, as Kubernetes validates it: a DNS-1035 label (starts with a letter).
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def dns1035_label_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1035 label (a Kubernetes Service name), or None."""
    if len(value) > 63:
        return f"is {len(value)} characters, a DNS-1035 label has at most 63"
    if not _DNS1035_LABEL.fullmatch(value):
        return (
            f"{value!r} is not a DNS-1035 label (lower-case letters, digits and '-', "
            "starting with a letter and ending with a letter or digit)"
        )
    return None


def traffic_problem(t: TrafficRouting) -> tuple[str, str] | None:
    """(field, why) for the first malformed field of a traffic routing, or None."""
    at = "payload.traffic"
    problem = dns1123_subdomain_problem(t.http_route)
    if problem is not None:
        return f"{at}.http_route", "HTTPRoute name " + problem
    for name in ("stable_service", "canary_service"):
        problem = dns1035_label_problem(getattr(t, name))
        if problem is not None:
            return f"{at}.{name}", "Service name " + problem
    if t.stable_service == t.canary_service:
        return (
            f"{at}.canary_service",
            f"is {t.canary_service!r}, the stable Service's name: expected two distinct Services",
        )
    if not 1 <= t.port <= 65535:
        return f"{at}.port", f"is {t.port}, expected a port number 1..65535"
    return None


def url_problem(url: str) -> str | None:
    """Why `url` is not an acceptable webhook sink, or None."""
    if len(url) > MAX_URL:
        return f"is {len(url)} characters, at most {MAX_URL} are allowed"
    text = text_problem(url, MAX_URL)
    if text is not None or any(c.isspace() for c in url):
        return text or "holds white space; a URL has none"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError as exc:
        return f"{url!r} is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme or 'none'!r}, expected http or https"
    if not parts.hostname:
        return f"{url!r} names no host"
    if parts.username is not None or parts.password is not None:
        return "holds credentials (user@ or user:password@), which the log would publish"
    return None


def delivery_problem(p: PolicySet) -> tuple[str, str] | None:
    """(field, why) for the first malformed v3 setting of a policy, or None."""
    if not 1 <= p.resume_approvals <= MAX_RESUME_APPROVALS:
        return (
            "payload.resume_approvals",
            f"is {p.resume_approvals}, expected 1..{MAX_RESUME_APPROVALS}",
        )
    if p.traffic is not None:
        found = traffic_problem(p.traffic)
        if found is not None:
            return found
    if len(p.notify) > MAX_NOTIFY:
        return "payload.notify", f"lists {len(p.notify)} sinks, at most {MAX_NOTIFY} are allowed"
    seen: set[str] = set()
    for i, url in enumerate(p.notify):
        problem = url_problem(url)
        if problem is None and url in seen:
            problem = "is listed twice"
        if problem is not None:
            return f"payload.notify[{i}]", problem
        seen.add(url)
    return None
