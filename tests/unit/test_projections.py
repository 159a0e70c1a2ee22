"""SQL projections on SQLite. The test bodies live in `ProjectionSuite`, which the PostgreSQL
integration tests run again against a real server (tests/integration/test_projections_postgres.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from infra.processes import wait_for
from ledger import projection_schema as schema
from ledger.formats import KillScope, LogEntry, encode_entry, make_entry
from ledger.projections import Position, ProjectionDivergenceError, Projector, dump, fresh_dump
from ledger.rules import RuleViolationError, fold
from ledger.scenario import Cast
from ledger.spilled_index import ScratchIndexes, SpilledObjects, spilled_state
from ledger.state import LedgerState
from ledger.store.sqlite import SQLiteLogStore, log_table, sqlite_engine
from tests.unit.harness import Harness

# --------------------------------------------------------------------------------------------
# The story: a full governance flow, made once (signing is the slow part).


@dataclass(frozen=True)
class Story:
    entries: tuple[LogEntry, ...]
    h: dict[str, bytes]  # named entry hashes
    cast: Cast


def _build_story() -> Story:
    t = Harness(cast=Cast.create(seed="projections"))
    f, h = t.flow, {}
    t.base()
    h["p1"] = p1 = t.ok(f.propose())
    h["s1"] = t.ok(f.eval(p1, "safety", 0.99))
    h["q1"] = t.ok(f.eval(p1, "quality", 0.91))
    evals = (h["s1"], h["q1"])
    h["a1"] = t.ok(f.approve(p1, evals, "alice"))
    with pytest.raises(RuleViolationError) as refused:  # the proposing agent cannot approve
        t.core.append(f.approve(p1, evals, "agent"), t.tick)
    # SELF_APPROVAL once the agent also holds the approver role, ROLE_REQUIRED before.
    assert refused.value.violation.code in ("SELF_APPROVAL", "ROLE_REQUIRED")
    h["b1"] = t.ok(f.approve(p1, evals, "bob"))
    t.ok(f.step(p1, 0, 10, "STARTED"))
    t.ok(f.step(p1, 1, 50, "ADVANCED"))
    t.ok(f.health(p1, 1, True))
    t.ok(f.step(p1, 2, 100, "ADVANCED"))
    t.ok(f.step(p1, 2, 100, "PROMOTED"))
    # A second proposal whose approval is voided by a newer eval.
    h["p2"] = p2 = t.ok(f.propose("registry.example/model-server:v3", deployment="ranker"))
    h["s2"] = t.ok(f.eval(p2, "safety", 0.97))
    h["q2"] = t.ok(f.eval(p2, "quality", 0.85))
    h["a2"] = t.ok(f.approve(p2, (h["s2"], h["q2"]), "alice"))
    h["q2b"] = t.ok(f.eval(p2, "quality", 0.70))  # fails the policy, supersedes q2
    h["r2"] = t.ok(f.approve(p2, (h["s2"], h["q2b"]), "carol", decision="REJECT"))
    # A kill switch engaged and released, and a key revoked.
    scope = KillScope("TARGET", "models", "model-server")
    h["k"] = t.ok(f.kill(scope))
    h["kr"] = t.ok(f.release(scope))
    h["rev"] = t.ok(f.revoke(t.cast["oncall"].key.public.key_id))
    assert t.core.entries is not None
    return Story(tuple(t.core.entries), h, t.cast)


_STORY: Story | None = None


def story() -> Story:
    global _STORY
    if _STORY is None:
        _STORY = _build_story()
    return _STORY


def records(entries: tuple[LogEntry, ...] | list[LogEntry]) -> list[tuple[bytes, bytes]]:
    return [(e.body.event_id, e.entry_bytes) for e in entries]


def rows(engine: sa.Engine, table: sa.Table, *where: object) -> list[sa.Row]:  # type: ignore[type-arg]
    with engine.connect() as conn:
        return list(
            conn.execute(sa.select(table).where(*where).order_by(*table.primary_key.columns))
        )


def invalid_rows(engine: sa.Engine) -> list[tuple[int, int | None, str]]:
    t = schema.invalid_records_table
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(t.c.position, t.c.seq, t.c.reason).order_by(t.c.position)
            )
        ]  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# The suite, parametrized by the `engine` fixture of a subclass.


class ProjectionSuite:
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteLogStore]:
        s = SQLiteLogStore(tmp_path / "ledger.db")
        yield s
        s.close()

    def test_full_flow_rows(self, engine: sa.Engine, store: SQLiteLogStore) -> None:
        st = story()
        store.append(records(st.entries))
        projector = Projector(store, engine)
        assert projector.catch_up() == len(st.entries)
        hx = {k: v.hex() for k, v in st.h.items()}

        keys = rows(engine, schema.keys_table)
        assert len(keys) == 3 + 8
        oncall = [k for k in keys if k.principal == "human:oncall@example.org"]
        assert oncall[0].revoked_seq == len(st.entries) - 1 and oncall[0].roles == "operator"
        carol = next(k for k in keys if k.principal == "human:carol@example.org")
        assert (carol.roles, carol.kind, carol.revoked_seq) == ("approver operator", "human", None)

        (policy,) = rows(engine, schema.policies_table)
        assert policy.policy_id == "default" and policy.approvals_required == 2
        assert [s["weight"] for s in policy.plan] == [10, 50, 100]

        p1, p2 = rows(engine, schema.proposals_table)
        by_hash = {p.hash: p for p in (p1, p2)}
        assert (by_hash[hx["p1"]].phase, by_hash[hx["p1"]].step, by_hash[hx["p1"]].weight) == (
            "PROMOTED",
            2,
            100,
        )
        assert by_hash[hx["p1"]].proposer == "agent:researcher-7"
        assert (by_hash[hx["p2"]].phase, by_hash[hx["p2"]].step, by_hash[hx["p2"]].deployment) == (
            "PENDING",
            None,
            "ranker",
        )
        assert by_hash[hx["p2"]].updated_seq > by_hash[hx["p2"]].seq

        evals = {r.hash: r for r in rows(engine, schema.evals_table)}
        assert len(evals) == 5
        assert evals[hx["q2"]].passed and not evals[hx["q2"]].is_latest
        assert not evals[hx["q2b"]].passed and evals[hx["q2b"]].is_latest
        assert evals[hx["q2b"]].failures and evals[hx["s1"]].is_latest

        approvals = {r.hash: r for r in rows(engine, schema.approvals_table)}
        assert approvals[hx["a1"]].valid_now and approvals[hx["b1"]].valid_now
        assert approvals[hx["a1"]].approver == "human:alice@example.org"
        assert not approvals[hx["a2"]].valid_now, "a newer eval voids the approval"
        assert approvals[hx["r2"]].decision == "REJECT" and not approvals[hx["r2"]].valid_now

        steps = rows(engine, schema.rollout_steps_table)
        assert [(s.step, s.weight, s.phase) for s in steps] == [
            (0, 10, "STARTED"),
            (1, 50, "ADVANCED"),
            (2, 100, "ADVANCED"),
            (2, 100, "PROMOTED"),
        ]
        assert all(s.proposal == hx["p1"] for s in steps)

        (kill,) = rows(engine, schema.kill_switches_table)
        assert (kill.scope_kind, kill.scope_namespace, kill.scope_deployment) == (
            "TARGET",
            "models",
            "model-server",
        )
        assert kill.engaged_by == "human:oncall@example.org"
        assert kill.released_by == ["human:alice@example.org", "human:bob@example.org"]
        assert kill.released_seq == kill.engaged_seq + 1

        last = st.entries[-1]
        assert projector.stored_position() == Position(
            len(st.entries), last.seq + 1, last.leaf_hash
        )
        assert invalid_rows(engine) == []

    def test_rows_agree_with_an_independent_fold(
        self, engine: sa.Engine, store: SQLiteLogStore
    ) -> None:
        st = story()
        store.append(records(st.entries))
        Projector(store, engine, batch_size=7).catch_up()
        state = fold(st.entries)
        proposals = {r.hash: r for r in rows(engine, schema.proposals_table)}
        assert set(proposals) == {h.hex() for h in state.proposals}
        for h, p in state.proposals.items():
            assert proposals[h.hex()].phase == p.phase
            valid = {
                r.approver
                for r in rows(
                    engine,
                    schema.approvals_table,
                    schema.approvals_table.c.proposal == h.hex(),
                    schema.approvals_table.c.valid_now,
                )
            }
            assert valid == set(state.valid_approvers(p))
        keys = {r.key_id: r for r in rows(engine, schema.keys_table)}
        assert {k.hex(): (i.principal, i.revoked_seq) for k, i in state.keys.items()} == {
            k: (r.principal, r.revoked_seq) for k, r in keys.items()
        }
        active = rows(
            engine, schema.kill_switches_table, schema.kill_switches_table.c.released_seq.is_(None)
        )
        assert len(active) == len(state.kill_switches) == 0

    def test_a_state_spilled_to_disk_projects_the_same_rows(
        self, engine: sa.Engine, store: SQLiteLogStore, tmp_path: Path
    ) -> None:
        """The server's projector folds into a state kept in its scratch directory
        (ledger.spilled_index), one proposal in memory at a time here: the rows are those of
        the in-memory fold, a policy replaced over every proposal and a restart included."""
        t = Harness(cast=Cast.create(seed="spilled-projections"))
        t.base()
        ps = [
            t.ok(t.flow.propose(f"registry.example/m:v{i}", deployment=f"m{i}")) for i in range(4)
        ]
        safety = [t.ok(t.flow.eval(p, "safety", 0.99)) for p in ps]  # each reads its proposal back
        quality = [t.ok(t.flow.eval(p, "quality", 0.91)) for p in ps]
        for p, s, q in zip(ps, safety, quality, strict=True):
            t.ok(t.flow.approve(p, (s, q), "alice"))
        t.ok(t.flow.policy(approvals=1))  # every proposal's valid approvals are refreshed
        assert t.core.entries is not None
        store.append(records(t.core.entries))

        def spilled() -> LedgerState:
            return spilled_state(ScratchIndexes(tmp_path, flush_at=1, hot_objects=1))

        projector = Projector(store, engine, batch_size=3, new_state=spilled)
        projector.catch_up()
        assert dump(engine) == fresh_dump(store)
        proposals = projector.state.proposals
        assert isinstance(proposals, SpilledObjects) and proposals.loads >= 12
        projector.reset()  # as after a restart: the state is folded again, into a new file
        assert projector.state.size == len(t.core.entries)
        assert not [f for f in tmp_path.iterdir() if f.name.startswith("steward-scratch")]

    @pytest.mark.parametrize("batch_size", [1, 3, 1000])
    def test_batch_size_does_not_change_rows(
        self, engine: sa.Engine, store: SQLiteLogStore, batch_size: int
    ) -> None:
        store.append(records(story().entries))
        Projector(store, engine, batch_size=batch_size).catch_up()
        assert dump(engine) == fresh_dump(store)

    def test_crash_between_rows_and_commit(
        self,
        engine: sa.Engine,
        store: SQLiteLogStore,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        st = story()
        store.append(records(st.entries))
        original = Projector._commit_position
        calls = {"n": 0}

        def crashing(
            self: Projector, conn: sa.Connection, expected: Position, new: Position
        ) -> None:
            original(self, conn, expected, new)  # rows and position written, not yet committed
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected crash before commit")

        monkeypatch.setattr(Projector, "_commit_position", crashing)
        projector = Projector(store, engine, batch_size=4)
        with pytest.raises(RuntimeError, match="injected crash"):
            projector.catch_up()

        # Exactly the first two batches are visible, and they equal a fresh fold of that prefix.
        stored = projector.stored_position()
        assert stored.next_position == 8 and stored.next_seq == 8
        prefix = SQLiteLogStore(tmp_path / "prefix.db")
        prefix.append(records(st.entries[:8]))
        assert dump(engine) == fresh_dump(prefix)
        prefix.close()

        # The same projector carries on (its state is rebuilt), and so does a restarted one.
        projector.catch_up()
        assert dump(engine) == fresh_dump(store)
        assert Projector(store, engine).catch_up() == 0
        assert dump(engine) == fresh_dump(store)

    def test_process_killed_mid_batch(
        self, engine: sa.Engine, store: SQLiteLogStore, tmp_path: Path
    ) -> None:
        """A real process death (os._exit, no cleanup) after a batch's rows are written."""
        st = story()
        store.append(records(st.entries))
        script = textwrap.dedent("""
            import os, sys
            import sqlalchemy as sa
            from ledger.projections import Projector
            from ledger.store.sqlite import SQLiteLogStore
            original = Projector._commit_position
            calls = []
            def dying(self, conn, expected, new):
                original(self, conn, expected, new)
                calls.append(new)
                if len(calls) == 2:
                    os._exit(9)
            Projector._commit_position = dying
            store = SQLiteLogStore(sys.argv[1])
            Projector(store, sa.create_engine(sys.argv[2]), batch_size=5).catch_up()
        """)
        url = engine.url.render_as_string(hide_password=False)
        done = subprocess.run([sys.executable, "-c", script, str(store.path), url], timeout=120)
        assert done.returncode == 9
        projector = Projector(store, engine)
        assert projector.stored_position().next_position == 5
        prefix = SQLiteLogStore(tmp_path / "prefix.db")
        prefix.append(records(st.entries[:5]))
        assert dump(engine) == fresh_dump(prefix)
        prefix.close()
        projector.catch_up()
        assert dump(engine) == fresh_dump(store)

    def test_garbage_records_are_skipped_and_recorded(
        self, engine: sa.Engine, store: SQLiteLogStore
    ) -> None:
        st = story()
        entries = list(st.entries)
        flow_keys = st.cast.extra_key("intruder", seed="projections")
        good = records(entries)
        # A proposal signed by an unknown key, placed right in the chain (correct seq and prev).
        after = entries[20]
        from ledger.events import new_body, sign  # local: only this test forges
        from ledger.formats import ModelRef, ProposalOrigin, ProposalSubmitted, Target

        forged_body = new_body(
            after.body.ledger,
            ProposalSubmitted(
                Target("models", "model-server"),
                ModelRef("evil:latest", "sha256:" + "e" * 64),
                ModelRef("x", "y"),
                "trust me",
                ProposalOrigin("agent:x", "r"),
            ),
        )
        forged = make_entry(
            21, after.leaf_hash, sign(forged_body, flow_keys), after.entry.received_at + 1
        )
        truncated = entries[5].entry_bytes[:-7]
        bad = [
            (3, b"k", b"garbage"),
            (10, b"k", truncated),
            (15, b"k", encode_entry(entries[4].entry)),  # a replayed entry: wrong seq here
            (21, b"k", forged.entry_bytes),
        ]
        mixed: list[tuple[bytes, bytes]] = list(good)
        for index, key, value in sorted(bad, reverse=True):
            mixed.insert(index, (key, value))
        store.append(mixed)

        projector = Projector(store, engine, batch_size=6)
        projector.catch_up()
        recorded = invalid_rows(engine)
        positions = [p for p, _, _ in recorded]
        assert positions == [mixed.index((b"k", v)) for _, _, v in sorted(bad)]
        reasons = [r for _, _, r in recorded]
        assert reasons[0].startswith("decode:") and reasons[1].startswith("decode:")
        assert "SEQ_MISMATCH" in reasons[2] and recorded[2][1] == 4
        assert "UNKNOWN_KEY" in reasons[3]
        assert projector.invalid_count == 4

        clean = SQLiteLogStore(store.path.with_name("clean.db"))
        clean.append(good)
        assert dump(engine) == fresh_dump(clean)
        clean.close()
        # A restart replays past the same garbage and lands on the stored position.
        assert Projector(store, engine).catch_up() == 0
        assert Projector(store, engine, full_replay=True).catch_up() == 0
        assert projector.stored_position().next_seq == len(entries)

    @pytest.mark.parametrize("full_replay", [False, True])
    def test_restart_resumes_without_duplicates(
        self, engine: sa.Engine, store: SQLiteLogStore, full_replay: bool
    ) -> None:
        st = story()
        half = len(st.entries) // 2
        store.append(records(st.entries[:half]))
        first = Projector(store, engine, batch_size=5)
        assert first.catch_up() == half
        assert first.catch_up() == 0
        store.append(records(st.entries[half:]))
        restarted = Projector(store, engine, batch_size=5, full_replay=full_replay)
        assert restarted.stored_position().next_position == half
        assert restarted.state.size == half  # rebuilt by replay
        assert restarted.catch_up() == len(st.entries) - half
        assert dump(engine) == fresh_dump(store)
        assert len(rows(engine, schema.keys_table)) == 11

    def test_run_follows_the_log(self, engine: sa.Engine, store: SQLiteLogStore) -> None:
        st = story()
        projector = Projector(store, engine, batch_size=8)
        stop = threading.Event()
        thread = threading.Thread(target=projector.run, args=(stop,), kwargs={"idle_timeout": 0.05})
        thread.start()
        try:
            for i in range(0, len(st.entries), 9):
                store.append(records(st.entries[i : i + 9]))
                time.sleep(0.02)
            wait_for(
                "the projector to catch up",
                lambda: projector.stored_position().next_position >= len(st.entries),
                20,
                every=0.05,
            )
        finally:
            stop.set()
            thread.join(timeout=10)
        assert not thread.is_alive()
        assert dump(engine) == fresh_dump(store)

    def test_a_store_closed_after_the_stop_ends_the_thread_quietly(
        self, engine: sa.Engine, store: SQLiteLogStore
    ) -> None:
        """The server sets the stop, then closes the store without joining the projector (a
        daemon thread); the follower may be inside the store when it closes. Seen in CI as an
        unhandled StoreError in the projector thread."""
        st = story()
        store.append(records(st.entries))
        projector = Projector(store, engine)
        failures: list[BaseException] = []
        stop = threading.Event()

        def run() -> None:
            try:
                projector.run(stop, idle_timeout=0.5)
            except BaseException as exc:  # what the thread would leave unhandled
                failures.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        wait_for(
            "the projector to catch up",
            lambda: projector.stored_position().next_position >= len(st.entries),
            20,
            every=0.05,
        )
        time.sleep(0.1)  # now idle inside store.follow, checking the end every 50 ms
        stop.set()
        store.close()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert failures == []

    @pytest.mark.parametrize("full_replay", [False, True])
    def test_rewritten_log_is_detected_and_rebuilt(
        self, engine: sa.Engine, store: SQLiteLogStore, full_replay: bool
    ) -> None:
        st = story()
        store.append(records(st.entries))
        Projector(store, engine).catch_up()
        # Someone rewrites an early record in the storage itself.
        raw = sqlite_engine(store.path)
        with raw.begin() as conn:
            conn.execute(
                log_table.update().where(log_table.c.position == 20).values(value=b"rewritten")
            )
        raw.dispose()
        restarted = Projector(store, engine, full_replay=full_replay)
        with pytest.raises(ProjectionDivergenceError, match="rebuild them"):
            restarted.catch_up()
        restarted.rebuild()
        assert restarted.stored_position().next_seq == 20  # everything after it breaks the chain
        assert len(invalid_rows(engine)) == len(st.entries) - 20


class TestProjectionsSQLite(ProjectionSuite):
    @pytest.fixture
    def engine(self, store: SQLiteLogStore) -> Iterator[sa.Engine]:
        # The projections share the log's database file, as the embedded ledger runs them.
        engine = sqlite_engine(store.path)
        yield engine
        engine.dispose()
