"""Step 11, drift: what the log implies for each target against a cluster read from a dict.

Ledgers come from the ledger's own core (tests.audit_tamper.Builder), so every one is clean;
the cluster is a plain mapping read through the same seam the live check uses.
"""

from __future__ import annotations

from audit.drift import LiveDeployment, drift_findings
from audit.findings import Finding, Report
from audit.trust import TrustRoot
from audit.verify import verify
from ledger.formats import ObservedState
from tests.audit_tamper import Builder

NS, NAME = "models", "model-server"
V1, V2, V3 = (f"registry.example/model-server:v{n}" for n in (1, 2, 3))
N = 4  # the stable replicas Flow.step records as observed when a rollout starts


def _approved(b: Builder, image: str, replicas: int = N) -> bytes:
    f = b.flow
    p = b.ok(f.propose(image, namespace=NS, deployment=NAME))
    evals = (b.ok(f.eval(p, "safety", 0.99)), b.ok(f.eval(p, "quality", 0.91)))
    b.ok(f.approve(p, evals, "alice"))
    b.ok(f.approve(p, evals, "bob"))
    seen = ObservedState(replicas, 0, 0, V1, "")
    b.ok(f.step(p, 0, 10, "STARTED", observed=seen))
    return p


def _promoted(b: Builder, image: str) -> None:
    f = b.flow
    p = _approved(b, image)
    b.ok(f.step(p, 1, 50, "ADVANCED"))
    b.ok(f.health(p, 1, True))
    b.ok(f.step(p, 2, 100, "ADVANCED"))
    b.ok(f.step(p, 2, 100, "PROMOTED"))


def _ledger(*rollouts: tuple[str, str]) -> Report:
    """A ledger of rollouts on one target, each (image, how) in order; how is "promoted",
    "active", or "rolled back at R" (started with R replicas observed, then rolled back)."""
    b = Builder()
    f = b.flow
    b.ok(f.genesis())
    for g in f.grants():
        b.ok(g)
    b.ok(f.policy())
    for image, how in rollouts:
        if how == "promoted":
            _promoted(b, image)
        elif how == "active":
            _approved(b, image)
        else:
            p = _approved(b, image, replicas=int(how.removeprefix("rolled back at ")))
            b.ok(f.step(p, 0, 0, "ROLLED_BACK"))
    log = b.log()
    report = verify(log.records, TrustRoot.from_json(log.trust), log.checkpoints)
    assert [str(x) for x in report.findings] == []
    return report


def _drift(report: Report, cluster: dict[str, LiveDeployment]) -> list[Finding]:
    def read(ns: str, name: str) -> LiveDeployment | None:
        assert ns == NS
        return cluster.get(name)

    return drift_findings(report, read)


def test_two_promotions_on_one_target_expect_the_newest() -> None:
    report = _ledger((V2, "promoted"), (V3, "promoted"))
    assert _drift(report, {NAME: LiveDeployment(V3, N)}) == []


def test_a_later_active_rollout_expects_its_canary_not_the_earlier_promotion() -> None:
    report = _ledger((V2, "promoted"), (V3, "active"))
    cluster = {NAME: LiveDeployment(V2, N - 1), f"{NAME}-canary": LiveDeployment(V3, 1)}
    assert _drift(report, cluster) == []


def test_image_changed_by_hand_after_the_latest_promotion_is_drift() -> None:
    report = _ledger((V2, "promoted"), (V3, "promoted"))
    found = _drift(report, {NAME: LiveDeployment(V1, N)})
    assert [(x.code, x.observed, x.expected) for x in found] == [("DRIFT", V1, V3)]
    assert f"{NS}/{NAME}" in found[0].message


def test_replicas_changed_by_hand_after_the_latest_promotion_is_drift() -> None:
    report = _ledger((V2, "promoted"), (V3, "promoted"))
    found = _drift(report, {NAME: LiveDeployment(V3, 2)})
    assert [(x.code, x.observed, x.expected) for x in found] == [("DRIFT", "2", str(N))]
    assert f"{NS}/{NAME}" in found[0].message


def test_a_canary_left_after_the_latest_promotion_is_drift() -> None:
    report = _ledger((V2, "promoted"), (V3, "promoted"))
    cluster = {NAME: LiveDeployment(V3, N), f"{NAME}-canary": LiveDeployment(V3, 1)}
    found = _drift(report, cluster)
    assert [(x.code, x.observed, x.expected) for x in found] == [("DRIFT", "present", "absent")]


def test_an_active_canary_running_another_image_is_drift() -> None:
    report = _ledger((V2, "promoted"), (V3, "active"))
    cluster = {NAME: LiveDeployment(V2, N - 1), f"{NAME}-canary": LiveDeployment(V1, 1)}
    found = _drift(report, cluster)
    assert [(x.code, x.observed, x.expected) for x in found] == [("DRIFT", V1, V3)]


def test_a_later_rolled_back_rollout_leaves_the_promotion_at_the_replicas_it_started_with() -> None:
    report = _ledger((V2, "promoted"), (V3, "rolled back at 6"))
    assert _drift(report, {NAME: LiveDeployment(V2, 6)}) == []
    found = _drift(report, {NAME: LiveDeployment(V3, 6)})
    assert [(x.code, x.observed, x.expected) for x in found] == [("DRIFT", V3, V2)]
