"""One measurement from Prometheus's HTTP API: an instant query answered by one value.

``GET /api/v1/query?query=Q&time=T`` (Prometheus "HTTP API", instant queries). A query must
come down to one number: a scalar, or a vector of exactly one series. Anything else is an
inconclusive measurement whose ``detail`` says what happened (no data, several series, NaN,
an error Prometheus reported, or Prometheus not answering at all); it never raises.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ledger.formats import Sample

DETAIL_MAX = 200  # a sample's detail stays short: the report carries every sample


@dataclass(frozen=True)
class Prometheus:
    base_url: str  # e.g. http://127.0.0.1:9090
    timeout: float = 5.0

    def measure(self, query: str, at_ms: int) -> Sample:
        """The value of `query` at `at_ms`, or an inconclusive sample saying why not."""
        params = urllib.parse.urlencode({"query": query, "time": f"{at_ms / 1000:.3f}"})
        url = f"{self.base_url.rstrip('/')}/api/v1/query?{params}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return _inconclusive(at_ms, f"Prometheus HTTP {exc.code}: {_error_of(exc)}")
        except (OSError, ValueError) as exc:  # refused, timed out, not JSON
            return _inconclusive(at_ms, f"Prometheus unreachable: {exc}")
        return _value_of(doc, at_ms)


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(exc.read())
        return f"{doc.get('errorType', '')}: {doc.get('error', '')}"
    except (OSError, ValueError):
        return str(exc.reason)


def _value_of(doc: object, at_ms: int) -> Sample:
    if not isinstance(doc, dict) or doc.get("status") != "success":
        err = doc.get("error", "no status") if isinstance(doc, dict) else "not an object"
        return _inconclusive(at_ms, f"Prometheus error: {err}")
    data = doc.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        raw = result[1]
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return _inconclusive(at_ms, "no data")
        if len(result) > 1:
            return _inconclusive(at_ms, f"{len(result)} series: the query must give one value")
        raw = result[0].get("value", [None, None])[1]
    else:
        return _inconclusive(at_ms, f"result type {kind}: expected a scalar or a vector")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return _inconclusive(at_ms, f"not a number: {raw!r}")
    if not math.isfinite(value):
        return _inconclusive(at_ms, f"{value} (no finite value: e.g. no requests to divide by)")
    return Sample(at_ms, value, "")


def _inconclusive(at_ms: int, detail: str) -> Sample:
    # Stored text must hold no control characters (docs/FORMAT.md "Names and text").
    clean = "".join(c if c.isprintable() else " " for c in detail)
    return Sample(at_ms, None, clean[:DETAIL_MAX])
