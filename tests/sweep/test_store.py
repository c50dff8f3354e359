"""The results store: content hashes, status transitions, schema versions, atomic changes."""

from __future__ import annotations

import sqlite3

import pytest

from lowbit.errors import ArtefactError
from lowbit.sweep.store import SCHEMA_VERSION, config_hash, open_store


def test_hash_is_canonical_and_content_sensitive():
    a = config_hash({"model": "m", "plan": {"bits": 4, "group": 64}})
    assert a == config_hash({"plan": {"group": 64, "bits": 4}, "model": "m"})
    assert a != config_hash({"model": "m", "plan": {"bits": 4, "group": 32}})
    assert len(a) == 16


def test_trial_lifecycle_and_done_never_rerun(tmp_path):
    store = open_store(tmp_path / "s.sqlite")
    d = store.add("t", {"x": 1})
    assert store.add("t again", {"x": 1}) == d  # same content, one row
    assert [t.status for t in store.trials()] == ["pending"]
    store.start(d)
    store.fail(d, "boom")
    assert store.trials()[0].status == "failed" and store.trials()[0].error == "boom"
    store.start(d)
    store.finish(d, {"kl": 0.5}, {"result": "r.json"}, {"v": 1}, 2.0)
    (t,) = store.trials("done")
    assert (t.attempts, t.metrics, t.artefacts, t.error) == (
        2,
        {"kl": 0.5},
        {"result": "r.json"},
        None,
    )
    assert store.todo([d]) == []
    with pytest.raises(ArtefactError, match="done"):
        store.start(d)
    store.close()
    again = open_store(tmp_path / "s.sqlite", create=False)
    assert again.trials()[0].metrics == {"kl": 0.5}  # durable across connections
    again.close()


def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "s.sqlite"
    open_store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    before = path.read_bytes()
    with pytest.raises(ArtefactError, match="newer lowbit"):
        open_store(path)
    assert path.read_bytes() == before


def test_foreign_files_are_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ArtefactError, match="not a lowbit results store"):
        open_store(other)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all, just bytes" * 100)
    with pytest.raises(ArtefactError, match="not a lowbit results store"):
        open_store(junk)
    with pytest.raises(ArtefactError, match="does not exist"):
        open_store(tmp_path / "missing.sqlite", create=False)


def test_a_failed_change_leaves_the_row_as_it_was(tmp_path):
    store = open_store(tmp_path / "s.sqlite")
    d = store.add("t", {"x": 1})
    store.start(d)
    with pytest.raises(RuntimeError), store._tx() as db:  # a crash inside a change
        db.execute("UPDATE trials SET status='done', metrics='{}' WHERE hash=?", (d,))
        raise RuntimeError("killed between the statements")
    (t,) = store.trials()
    assert (t.status, t.metrics) == ("running", None)
    store.close()
