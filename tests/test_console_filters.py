"""The filter language (``engine.filters``) and the store's paged, filtered, sorted listings."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.filters import FilterError, compile_filter
from engine.store import Store, StoreError
from tests.helpers.recording import record_run

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Runs recorded the way the jobs record them (model labels such as ``cnn14-64mel``), tags, an archived one."""
    s = Store(tmp_path / "experiments.db")
    rows = [("train-0001", "cnn14", "done", 0.85, "baseline cnn14"),
            ("train-0002", "cnn14", "done", 0.78, "cnn14 mixup"),
            ("train-0003", "resnet38", "done", 0.82, "resnet"),
            ("train-0004", "cnn14", "failed", None, "broken lr")]
    for run_id, arch, status, cv, name in rows:
        record_run(s, tmp_path / "runs", run_id, dataset_id=None, overrides=(f'model.arch="{arch}"',),
                   status=status, name=name, cv=cv)
    record_run(s, tmp_path / "runs", "infer-0005", kind="infer", dataset_id=None, parent="train-0001",
               status="running", name="tta of 1")
    s.set_run_tags("train-0001", ["best", "Paper"])
    s.set_run_tags("train-0003", ["best"])
    s.set_run_note("train-0002", "mixup alpha 0.4 hurt the rare classes")
    s.set_runs_archived(["train-0004"])
    yield s
    s.close()


def ids(store: Store, query: str, **kw) -> list[str]:
    c = compile_filter(query)
    return [r["run_id"] for r in store.page_runs(where=c.sql, params=c.params, order="run_id",
                                                  descending=False, **kw)]


def test_terms_and_implicit_and(store: Store) -> None:
    assert ids(store, "model:cnn14 cv>0.8 status:done tag:best") == ["train-0001"]
    assert ids(store, "model:CNN14") == ["infer-0005", "train-0001", "train-0002"]
    assert ids(store, "cv>=0.82") == ["train-0001", "train-0003"]
    assert ids(store, "cv<0.8") == ["train-0002"]
    assert ids(store, "cv:none") == ["infer-0005"]  # the archived failed run is hidden by default


def test_model_matches_the_architecture_or_the_whole_label(store: Store) -> None:
    assert {r["model"] for r in store.page_runs()} == {"cnn14-64mel", "resnet38-64mel"}
    assert ids(store, "model:cnn14-64mel") == ["infer-0005", "train-0001", "train-0002"]
    assert ids(store, "arch:ResNet38") == ["train-0003"]
    assert ids(store, "model:resnet38*") == ["train-0003"]
    # The architecture is the part before the '-': a shorter word is not a match.
    assert ids(store, "model:cnn") == [] and ids(store, "model:cnn14-64") == []
    assert ids(store, "model!=cnn14") == ["train-0003"]


def test_or_not_and_parentheses(store: Store) -> None:
    assert ids(store, "model:resnet38 OR cv>0.84") == ["train-0001", "train-0003"]
    assert ids(store, "NOT model:cnn14") == ["train-0003"]
    assert ids(store, "-tag:best status:done") == ["train-0002"]
    assert ids(store, "(model:cnn14 OR model:resnet38) AND NOT tag:paper") == [
        "infer-0005", "train-0002", "train-0003"]
    # AND binds tighter than OR.
    assert ids(store, "model:resnet38 OR model:cnn14 cv>0.8") == ["train-0001", "train-0003"]


def test_text_fields_bare_words_and_wildcards(store: Store) -> None:
    assert ids(store, "mixup") == ["train-0002"]              # a bare word: id or name contains
    assert ids(store, "name:cnn14") == ["train-0001", "train-0002"]
    assert ids(store, "note:rare") == ["train-0002"]
    assert ids(store, "id:train-000*") == ["train-0001", "train-0002", "train-0003"]
    assert ids(store, 'name:"tta of"') == ["infer-0005"]
    assert ids(store, "kind:infer") == ["infer-0005"]
    # % and _ in a value are literal, not LIKE wildcards.
    assert ids(store, "name:%") == []


def test_archived_runs_are_hidden_but_kept(store: Store) -> None:
    assert "train-0004" not in ids(store, "")
    assert ids(store, "", archived=True) == ["train-0004"]
    assert ids(store, "status:failed", archived=None) == ["train-0004"]
    assert store.run_totals() == {"runs": 4, "archived": 1}


def test_time_fields_take_dates_and_ages(tmp_path: Path) -> None:
    c = compile_filter("created>2d", now=lambda: NOW)  # more than two days old
    assert c.sql == "r.created_at < :f0" and c.params["f0"] == NOW - 2 * 86400
    c = compile_filter("created<2h", now=lambda: NOW)  # less than two hours ago = newer than now-2h
    assert c.sql == "r.created_at > :f0" and c.params["f0"] == NOW - 7200
    c = compile_filter("created:2026-11-30")
    assert "r.created_at >= :f0 AND r.created_at < :f1" in c.sql
    assert c.params["f1"] - c.params["f0"] == 86400


def test_job_filters(tmp_path: Path) -> None:
    s = Store(tmp_path / "experiments.db")
    a = s.enqueue("train", {}, name="cnn14 long")
    b = s.enqueue("infer", {}, name="tta")
    s.request_cancel(b)
    c = compile_filter("status:cancelled OR name:long", "jobs")
    assert [j["id"] for j in s.page_jobs(where=c.sql, params=c.params, order="id", descending=False)] == [a, b]
    c = compile_filter("kind:train status:queued", "jobs")
    assert s.count_jobs_where(where=c.sql, params=c.params) == 1
    assert s.job_status_counts() == {"queued": 1, "cancelled": 1}


@pytest.mark.parametrize("query, words", [
    ("modle:cnn14", "unknown field 'modle' at column 1"),
    ("cv>abc", "cv takes a number, got 'abc'"),
    ("cv>", "needs a value after '>'"),
    ("model>cnn14", "model is text; use ':' or '!='"),
    ("(model:cnn14 OR cv>0.8", "parenthesis at column 1 is never closed"),
    ("model:cnn14)", "unexpected ')' at column 12"),
    ("model:cnn14 OR", "a term is missing after 'OR' at column 13"),
    ("NOT", "NOT at column 1 has nothing to negate"),
    ('name:"abc', "unclosed quote"),
    ("created>yesterday", "expected a date (2026-11-30) or an age"),
    (":x", "has no field before ':'"),
])
def test_errors_are_one_line_naming_the_token(query: str, words: str) -> None:
    with pytest.raises(FilterError) as err:
        compile_filter(query)
    text = str(err.value)
    assert words in text and "\n" not in text


def test_values_are_parameters_never_sql(store: Store) -> None:
    c = compile_filter("name:\"x' OR 1=1 --\"")
    assert "OR 1=1" not in c.sql and c.params == {"f0": "%x' OR 1=1 --%"}
    assert ids(store, "name:\"x' OR 1=1 --\"") == []


@pytest.mark.parametrize("query, index", [
    ("model:cnn14", "runs_model"), ("cv>0.8", "runs_cv"), ("status:done", "runs_status"),
    ("tag:best", "run_tags_tag"), ("kind:infer", "runs_kind"), ("parent:train-0001", "runs_parent"),
])
def test_filters_compile_to_indexed_sql(store: Store, query: str, index: str) -> None:
    c = compile_filter(query)
    plan = " ".join(str(tuple(r)[3]) for r in store.conn.execute(
        f"EXPLAIN QUERY PLAN SELECT r.id FROM runs r WHERE {c.sql}", c.params))
    assert f"INDEX {index}" in plan, plan


def test_pages_cover_every_run_once_in_sql_order(tmp_path: Path) -> None:
    s = Store(tmp_path / "experiments.db")
    for i in range(25):
        run_id = f"train-{i:04d}"
        record_run(s, tmp_path / "runs", run_id, dataset_id=None,
                   cv=None if i % 7 == 0 else (i * 13 % 25) / 25)
    seen: list[str] = []
    for offset in range(0, 25, 10):
        seen += [r["run_id"] for r in s.page_runs(order="cv", descending=True, limit=10, offset=offset)]
    assert len(seen) == 25 and len(set(seen)) == 25
    cvs = [s.get_run(r)["cv_lwlrap"] for r in seen]
    scored = [c for c in cvs if c is not None]
    assert scored == sorted(scored, reverse=True)
    assert cvs[len(scored):] == [None] * (25 - len(scored))  # missing scores last
    assert s.count_runs() == 25
    with pytest.raises(StoreError, match="cannot sort runs by 'bogus'"):
        s.page_runs(order="bogus")


def test_tags_notes_and_requeue(store: Store) -> None:
    assert store.run_tags("train-0001") == ["best", "Paper"]
    with pytest.raises(StoreError, match="one word"):
        store.set_run_tags("train-0001", ["two words"])
    assert store.run_tags("train-0001") == ["best", "Paper"]  # nothing lost on a refused edit
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.set_run_note("nope", "x")
    row = store.run_rows(["train-0001"])[0]
    assert sorted(row["tags"].split()) == ["Paper", "best"]
    job = store.enqueue("train", {}, name="x")
    with pytest.raises(StoreError, match="only failed or cancelled"):
        store.requeue_job(job)
    store.request_cancel(job)
    again = store.requeue_job(job)
    assert (again.status, again.attempts, again.message) == ("queued", 0, "requeued after cancelled")
