"""steward-monitor: automated canary analysis, signed (docs/ANALYSIS.md).

It follows the log through the gRPC client; for every rollout whose running step is gated by
the policy's checks it queries Prometheus at each check's interval and signs a
``HealthReported`` carrying the check's query as sent, every sample so far and the verdict
(``ledger.analysis.judge``), which the ledger, the controller and the auditor each recompute.

* :mod:`monitor.prometheus` asks Prometheus's HTTP API (``/api/v1/query``) for one value;
* :mod:`monitor.schedule` decides, purely, which measurements are due and the report each makes;
* :mod:`monitor.service` runs the loop, signs and submits, and serves its own metrics;
* :mod:`monitor.main` is the ``steward-monitor`` command.
"""
