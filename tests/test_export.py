"""`rearm export`: top-k round trips (parquet, csv, npz) equal to `Bundle.recommend`, chunking,
--users, embeddings tables, atomic output and bad input; and the top-k selection they share with
`rearm recommend` and the server (`stable_top_k`, `csr_rows`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from serve_run import NUM_ITEMS, NUM_USERS, item_id, train_small_run, user_id

from rearm.experiments.bundle import csr_rows, load_bundle, stable_top_k


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_small_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def expected(run_dir) -> dict[str, dict]:
    """Bundle.recommend (the function behind `rearm recommend`) for every user, k=7."""
    bundle = load_bundle(run_dir)
    users = [user_id(u) for u in range(NUM_USERS)]
    return {entry["user"]: entry for entry in bundle.recommend(users, 7)}


def assert_same(rows: dict[str, tuple[list, list]], expected: dict[str, dict]) -> None:
    """rows: user -> (items, scores); items equal, scores equal up to float32 rounding (a
    matrix product over a chunk of users may round the last bit differently from one over the
    users asked for: the BLAS kernel depends on the shape)."""
    assert set(rows) == set(expected)
    for user, (items, scores) in rows.items():
        assert items == expected[user]["items"], user
        np.testing.assert_allclose(
            np.float32(scores), np.float32(expected[user]["scores"]), rtol=1e-5, err_msg=user
        )


def long_rows(users, ranks, items, scores) -> dict[str, tuple[list, list]]:
    rows: dict[str, tuple[list, list]] = {}
    for user, rank, item, score in zip(users, ranks, items, scores):
        listed = rows.setdefault(str(user), ([], []))
        assert int(rank) == len(listed[0]) + 1  # ranks 1, 2, ... in order
        listed[0].append(str(item))
        listed[1].append(float(score))
    return rows


def test_parquet_round_trip(run_dir, tmp_path, expected, run_cli):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "top.parquet"
    code, stdout, err = run_cli("export", run_dir, "--out", out, "-k", 7, "--chunk-users", 50)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary == {**summary, "format": "parquet", "users": NUM_USERS, "k": 7}
    assert summary["rows"] == NUM_USERS * 7
    assert "export: 50/120 users" in err and "export: 120 users, top 7 ->" in err  # progress
    table = pq.read_table(out)
    assert table.column_names == ["user", "rank", "item", "score"]
    assert str(table.schema.field("score").type) == "float"
    assert pq.ParquetFile(out).metadata.num_row_groups == 3  # 50 + 50 + 20 users
    columns = table.to_pydict()
    rows = long_rows(columns["user"], columns["rank"], columns["item"], columns["score"])
    assert_same(rows, expected)


def test_csv_round_trip(run_dir, tmp_path, expected, run_cli):
    out = tmp_path / "top.csv"
    code, _, err = run_cli("export", run_dir, "--out", out, "--k", 7, "--chunk-users", 32)
    assert code == 0, err
    with open(out, newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["user", "rank", "item", "score"]
        users, ranks, items, scores = zip(*reader)
    assert_same(long_rows(users, ranks, items, scores), expected)


def test_npz_round_trip(run_dir, tmp_path, expected, run_cli):
    out = tmp_path / "top.npz"
    code, _, err = run_cli("export", run_dir, "--out", out, "-k", 7, "--chunk-users", 16)
    assert code == 0, err
    with np.load(out, allow_pickle=False) as data:
        assert set(data.files) == {"user", "items", "scores"}
        assert data["items"].shape == data["scores"].shape == (NUM_USERS, 7)
        assert data["scores"].dtype == np.float32
        rows = {
            str(user): (items.tolist(), scores.tolist())
            for user, items, scores in zip(data["user"], data["items"], data["scores"])
        }
    assert_same(rows, expected)
    assert not list(tmp_path.glob(".*"))  # the scratch folder is gone


def test_users_file_and_python_api(run_dir, tmp_path, expected):
    from rearm.serve.export import export_top_k, read_user_ids

    users_file = tmp_path / "users.txt"
    users_file.write_text(f"{user_id(9)}\n\n  {user_id(2)}  \n{user_id(9)}\n")
    users = read_user_ids(users_file)
    assert users == [user_id(9), user_id(2), user_id(9)]
    summary = export_top_k(run_dir, tmp_path / "some.npz", k=7, users=users)
    assert summary["users"] == 3
    with np.load(tmp_path / "some.npz") as data:
        assert data["user"].tolist() == users
        assert data["items"][1].tolist() == expected[user_id(2)]["items"]


def test_k_over_the_catalog_pads_npz_and_shortens_rows(run_dir, tmp_path):
    """With k = every item, a user's train items cannot be recommended: npz pads the places
    after the last item with -inf / "", the long formats just have fewer rows."""
    from rearm.serve.export import export_top_k

    bundle = load_bundle(run_dir)
    seen = np.diff(bundle.split("train").indptr)
    export_top_k(bundle, tmp_path / "all.npz", k=1000)
    with np.load(tmp_path / "all.npz") as data:
        assert data["items"].shape == (NUM_USERS, NUM_ITEMS)
        filled = np.isfinite(data["scores"]).sum(axis=1)
        np.testing.assert_array_equal(filled, NUM_ITEMS - seen)
        assert (data["items"][~np.isfinite(data["scores"])] == "").all()
    summary = export_top_k(bundle, tmp_path / "all.csv", k=1000)
    assert summary["rows"] == int((NUM_ITEMS - seen).sum())


def test_embeddings_tables(run_dir, tmp_path, run_cli):
    pq = pytest.importorskip("pyarrow.parquet")
    bundle = load_bundle(run_dir)
    out = tmp_path / "embeddings"
    code, stdout, err = run_cli("export", run_dir, "--format", "embeddings", "--out", out)
    assert code == 0, err
    assert json.loads(stdout)["dim"] == bundle.item_repr.shape[1]
    assert sorted(p.name for p in out.iterdir()) == ["items.parquet", "users.parquet"]
    for name, column, ids, table in (
        ("users.parquet", "user", [user_id(u) for u in range(NUM_USERS)], bundle.user_repr),
        ("items.parquet", "item", [item_id(i) for i in range(NUM_ITEMS)], bundle.item_repr),
    ):
        read = pq.read_table(out / name)
        assert read.column(column).to_pylist() == ids
        vectors = np.asarray(read.column("vector").combine_chunks().flatten()).reshape(len(ids), -1)
        np.testing.assert_array_equal(vectors, table)
    # a second export replaces its own folder
    code, _, _ = run_cli("export", run_dir, "--format", "embeddings", "--out", out, "--quiet")
    assert code == 0


def test_interrupted_export_leaves_nothing(run_dir, tmp_path, monkeypatch):
    from rearm.experiments.bundle import Bundle
    from rearm.serve.export import export_top_k

    calls = []
    original = Bundle.top_k_index

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Bundle, "top_k_index", failing)
    for name in ("top.csv", "top.npz", "top.parquet"):
        calls.clear()
        if name.endswith("parquet"):
            pytest.importorskip("pyarrow")
        with pytest.raises(KeyboardInterrupt):
            export_top_k(run_dir, tmp_path / name, k=5, chunk_users=50)
        assert list(tmp_path.iterdir()) == [], name


def test_bad_input_exits_2(run_dir, tmp_path, run_cli):
    def fails(*args, expect: str) -> None:
        code, _, err = run_cli("export", *args)
        assert code == 2, err
        assert expect in err and len(err.strip().splitlines()) == 1, err

    fails(run_dir, "--out", tmp_path / "top.txt", expect="--format")
    fails(run_dir, "--out", tmp_path / "top.csv", "-k", 0, expect="-k")
    fails(run_dir, "--out", tmp_path / "top.csv", "--chunk-users", 0, expect="--chunk-users")
    fails(tmp_path / "nothing", "--out", tmp_path / "top.csv", expect="not found")
    users = tmp_path / "users.txt"
    users.write_text(f"{user_id(1)}\nghost\n")
    fails(
        run_dir, "--out", tmp_path / "top.csv", "--users", users, expect="unknown user id 'ghost'"
    )
    users.write_text("\n \n")
    fails(run_dir, "--out", tmp_path / "top.csv", "--users", users, expect="no user ids")
    fails(
        run_dir, "--out", tmp_path / "top.csv", "--users", tmp_path / "nope", expect="cannot read"
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    fails(run_dir, "--format", "embeddings", "--out", busy, expect="not empty")
    assert (busy / "notes.txt").read_text() == "mine"
    fails(run_dir, "--out", busy, "--format", "csv", expect="is a folder; give the file")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    fails(run_dir, "--out", blocker / "top.csv", expect="cannot write")
    fails(run_dir, "--format", "embeddings", "--out", blocker / "emb", expect="cannot write")
    assert not (tmp_path / "top.csv").exists()


def test_stable_top_k_matches_a_stable_full_sort():
    rng = np.random.default_rng(0)
    for trial in range(400):
        n, m = int(rng.integers(1, 6)), int(rng.integers(1, 50))
        k = int(rng.integers(1, m + 1))
        if trial % 2:  # many ties, some rows with fewer than k finite scores
            scores = rng.integers(-2, 3, (n, m)).astype(np.float32)
            scores[rng.random((n, m)) < 0.3] = -np.inf
        else:
            scores = rng.standard_normal((n, m)).astype(np.float32)
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(stable_top_k(scores, k), expected)


def test_csr_rows_equals_scipy_row_indexing():
    rng = np.random.default_rng(1)
    matrix = sp.random(40, 30, density=0.2, format="csr", random_state=2)
    for rows in ([], [3], [5, 5, 0, 39], rng.integers(0, 40, 25)):
        rows = np.asarray(rows, dtype=np.int64)
        got, want = csr_rows(matrix, rows), matrix[rows]
        np.testing.assert_array_equal(got.indptr, want.indptr)
        np.testing.assert_array_equal(got.indices, want.indices)
