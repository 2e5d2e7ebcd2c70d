"""`rearm serve`: every endpoint through an HTTP client against a live uvicorn server on
127.0.0.1 (bad ids, bad k, oversize batch, missing and wrong key), equality with `rearm
recommend` / `Bundle.recommend`, the OpenAPI docs, the faiss index, and the CLI's refusals."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_run import NUM_ITEMS, item_id, train_small_run, user_id

from rearm.experiments.bundle import load_bundle

try:
    import fastapi  # noqa: F401
    import httpx
    import uvicorn

    HAVE_SERVE = True
except ImportError:
    HAVE_SERVE = False

needs_serve = pytest.mark.skipif(
    not HAVE_SERVE, reason="needs the serve extra: pip install 'rearm[serve]'"
)
KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_small_run(tmp_path_factory.mktemp("serve"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def live(app):
    """Run `app` under uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(run_dir):
    """A client of a live server without a key, limits max_batch=8, max_k=30."""
    from rearm.serve.app import create_app

    with live(create_app(run_dir, max_batch=8, max_k=30)) as url, httpx.Client(base_url=url) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(run_dir):
    """A client of a live server that requires KEY (it sends none by itself)."""
    from rearm.serve.app import create_app

    with live(create_app(run_dir, api_key=KEY)) as url, httpx.Client(base_url=url) as c:
        yield c


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"]
    return body["error"]


@needs_serve
def test_health_and_info(client, run_dir):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    bundle_json = run_dir / "model" / "bundle.json"
    assert info["bundle_sha256"] == hashlib.sha256(bundle_json.read_bytes()).hexdigest()
    assert info["verified"] is True
    assert (info["model"], info["num_users"], info["num_items"]) == ("mf", 120, NUM_ITEMS)
    assert info["protocol"] == "standard" and info["index"] == "exact"
    results = json.loads((run_dir / "results.json").read_text())
    assert info["metrics"]["test"] == results["test"]
    assert info["metrics"]["best_epoch"] == results["best_epoch"]
    assert info["limits"] == {"max_batch": 8, "max_k": 30}
    assert info["created"].endswith("+00:00")


@needs_serve
def test_get_recommend_equals_the_cli(client, run_dir, run_cli):
    # one user per CLI call, as the GET asks: a matrix product over several users may round
    # the last bit of a float32 score differently (the BLAS kernel depends on the shape)
    expected = []
    for user in (user_id(u) for u in (0, 7, 119)):
        code, out, _ = run_cli("recommend", run_dir, "--users", user, "-k", 7, "--json")
        assert code == 0
        expected += json.loads(out)["recommendations"]
    for entry in expected:
        got = client.get("/recommend", params={"user": entry["user"], "k": 7})
        assert got.status_code == 200
        assert got.json() == entry
    # exclusions: comma-separated and repeated parameters, the CLI's --exclude
    first = expected[0]
    dropped = first["items"][:3]
    code, out, _ = run_cli(
        "recommend", run_dir, "--users", first["user"], "-k", 7, "--exclude", ",".join(dropped),
        "--json",
    )  # fmt: skip
    cli = json.loads(out)["recommendations"][0]
    assert not set(dropped) & set(cli["items"])
    params = [("user", first["user"]), ("k", "7"), ("exclude", f"{dropped[0]},{dropped[1]}")]
    got = client.get("/recommend", params=params + [("exclude", dropped[2])])
    assert got.json() == cli


@needs_serve
def test_post_recommend_equals_bundle(client, run_dir):
    bundle = load_bundle(run_dir)
    users = [user_id(u) for u in (3, 1, 3, 50)]
    exclude = [item_id(5), item_id(9)]
    got = client.post("/recommend", json={"users": users, "k": 10, "exclude": exclude})
    assert got.status_code == 200
    assert got.json() == {"k": 10, "recommendations": bundle.recommend(users, 10, exclude)}
    train = bundle.split("train")
    for entry, user in zip(got.json()["recommendations"], (3, 1, 3, 50)):
        seen = {item_id(i) for i in train[user].indices}
        assert len(entry["items"]) == 10 and not seen & set(entry["items"])
        assert entry["scores"] == sorted(entry["scores"], reverse=True)


@needs_serve
def test_similar_is_cosine_of_item_vectors(client, run_dir):
    bundle = load_bundle(run_dir)
    vectors = bundle.item_repr / np.linalg.norm(bundle.item_repr, axis=1, keepdims=True)
    cosine = vectors @ vectors[4]
    cosine[4] = -np.inf
    expected = np.argsort(-cosine, kind="stable")[:6]
    got = client.get("/similar", params={"item": item_id(4), "k": 6}).json()
    assert got["item"] == item_id(4)
    assert got["items"] == [item_id(i) for i in expected]
    np.testing.assert_allclose(got["scores"], cosine[expected], rtol=1e-5)
    excluded = client.get(
        "/similar", params={"item": item_id(4), "k": 6, "exclude": got["items"][0]}
    ).json()
    assert excluded["items"] == got["items"][1:] + [item_id(np.argsort(-cosine, kind="stable")[6])]


@needs_serve
def test_recommend_items_for_a_new_user_equals_the_cli(client, run_dir, run_cli):
    history = [item_id(i) for i in (3, 17, 42)]
    code, out, err = run_cli(
        "recommend", run_dir, "--items", ",".join(history), "-k", 8, "--exclude", item_id(0),
        "--json",
    )  # fmt: skip
    assert code == 0, err
    cli = json.loads(out)
    got = client.post(
        "/recommend/items", json={"items": history, "k": 8, "exclude": [item_id(0)]}
    ).json()
    assert got == {"items": cli["items"], "scores": cli["scores"]}
    assert len(got["items"]) == 8 and not set(history + [item_id(0)]) & set(got["items"])
    assert "unknown item id 'i999'" in error_of(
        client.post("/recommend/items", json={"items": [item_id(1), "i999"]}), 404
    )
    assert "items" in error_of(client.post("/recommend/items", json={"items": []}), 422)
    nine = [item_id(i) for i in range(9)]
    assert "limit of 8" in error_of(client.post("/recommend/items", json={"items": nine}), 413)
    assert "limit of 30" in error_of(
        client.post("/recommend/items", json={"items": history, "k": 31}), 413
    )


@needs_serve
def test_errors_are_json_with_the_right_status(client):
    assert "unknown user id 'nobody'" in error_of(
        client.get("/recommend", params={"user": "nobody"}), 404
    )
    assert "unknown item id 'x9'" in error_of(
        client.get("/recommend", params={"user": user_id(1), "exclude": "x9"}), 404
    )
    assert "unknown item id" in error_of(client.get("/similar", params={"item": "u001"}), 404)
    assert "k" in error_of(client.get("/recommend", params={"user": user_id(1), "k": 0}), 422)
    assert "k" in error_of(client.get("/recommend", params={"user": user_id(1), "k": "ten"}), 422)
    assert "user" in error_of(client.get("/recommend"), 422)
    assert "limit of 30" in error_of(
        client.get("/recommend", params={"user": user_id(1), "k": 31}), 413
    )
    assert "limit of 30" in error_of(client.get("/similar", params={"item": "i001", "k": 99}), 413)
    nine = [user_id(u) for u in range(9)]
    assert "limit of 8" in error_of(client.post("/recommend", json={"users": nine}), 413)
    assert "users" in error_of(client.post("/recommend", json={"users": []}), 422)
    assert "users" in error_of(client.post("/recommend", json={"k": 3}), 422)
    assert "k" in error_of(client.post("/recommend", json={"users": ["u001"], "k": -1}), 422)
    assert "unknown user" in error_of(client.post("/recommend", json={"users": ["zz"]}), 404)
    bad_json = client.post(
        "/recommend", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "invalid JSON" in error_of(bad_json, 422)
    huge = client.post(
        "/recommend",
        content=b" " * 100_000,
        headers={"content-type": "application/json"},
    )
    assert "request body" in error_of(huge, 413)
    error_of(client.get("/no/such/path"), 404)
    # a body the framework cannot decode is invalid JSON too: 422, not an undeclared 400
    for body in (b'{"users": ["\xff\xfe"]}', b"[" * 50_000):
        sent = client.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert "body: invalid JSON" in error_of(sent, 422)
    # strict types: true is not the id 1 nor k = 1, "3" is not k = 3
    assert "users" in error_of(client.post("/recommend", json={"users": [True]}), 422)
    for k in (True, "3", 3.0):
        assert "k" in error_of(client.post("/recommend", json={"users": [user_id(1)], "k": k}), 422)


@needs_serve
def test_api_key_required_and_checked(keyed, run_dir):
    assert keyed.get("/health").status_code == 200  # liveness needs no key
    assert keyed.get("/openapi.json").status_code == 200
    params = {"user": user_id(2), "k": 3}
    for path, kwargs in (("/info", {}), ("/recommend", {"params": params})):
        assert "missing API key" in error_of(keyed.get(path, **kwargs), 401)
        wrong = keyed.get(path, headers={"X-API-Key": KEY + "x"}, **kwargs)
        assert error_of(wrong, 401) == "wrong API key"
        wrong_bearer = keyed.get(path, headers={"Authorization": "Bearer nope"}, **kwargs)
        assert error_of(wrong_bearer, 401) == "wrong API key"
        assert keyed.get(path, headers={"X-API-Key": KEY}, **kwargs).status_code == 200
        bearer = keyed.get(path, headers={"Authorization": f"Bearer {KEY}"}, **kwargs)
        assert bearer.status_code == 200
    post = keyed.post("/recommend", json={"users": [user_id(2)]})
    assert post.status_code == 401 and post.headers["www-authenticate"] == "Bearer"
    # the open schema does not tell where the run lives
    assert run_dir.name not in keyed.get("/openapi.json").text


@needs_serve
def test_openapi_docs(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/health", "/info", "/recommend", "/similar", "/recommend/items"} <= set(
        schema["paths"]
    )
    assert {"get", "post"} <= set(schema["paths"]["/recommend"])
    assert "404" in schema["paths"]["/recommend"]["get"]["responses"]


@needs_serve
def test_service_never_unpickles(run_dir, monkeypatch):
    import pickle

    import torch

    from rearm.serve.service import Service

    def refuse(*args, **kwargs):
        raise AssertionError("the server must not unpickle anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    service = Service(run_dir)
    assert service.recommend([user_id(0)], 3)[0]["items"]


@needs_serve
def test_altered_bundle_is_refused(run_dir, tmp_path, run_cli):
    from rearm.errors import RunError
    from rearm.serve.app import create_app

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = copy / "model" / "embeddings.npz"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RunError, match="SHA-256"):
        create_app(copy)
    code, _, err = run_cli("serve", copy, "--port", free_port())
    assert code == 2 and "SHA-256" in err and len(err.strip().splitlines()) == 1


@needs_serve
def test_cli_refusals(run_dir, tmp_path, run_cli):
    code, _, err = run_cli("serve", run_dir, "--host", "0.0.0.0")
    assert code == 2 and "--api-key-file" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "key"
    empty.write_text("\n")
    code, _, err = run_cli("serve", run_dir, "--host", "0.0.0.0", "--api-key-file", empty)
    assert code == 2 and "empty" in err
    accented = tmp_path / "accented"
    accented.write_text("cl\u00e9\n", encoding="utf-8")
    code, _, err = run_cli("serve", run_dir, "--api-key-file", accented)
    assert code == 2 and "printable ASCII" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("serve", run_dir, "--api-key-file", tmp_path / "missing")
    assert code == 2 and "cannot read the API key" in err
    code, _, err = run_cli("serve", tmp_path / "no-run")
    assert code == 2 and "not found" in err
    code, _, err = run_cli("serve", run_dir, "--max-k", "0")
    assert code == 2 and "--max-k" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = run_cli("serve", run_dir, "--port", taken.getsockname()[1])
    assert code == 2 and "cannot listen there" in err and len(err.strip().splitlines()) == 1


def test_missing_extra_is_named(run_dir, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    code, _, err = run_cli("serve", run_dir)
    assert code == 2 and "pip install 'rearm[serve]'" in err


@contextlib.contextmanager
def serve_process(*options: str):
    """`rearm serve OPTIONS` in a subprocess on a free port until /health answers; yields (base
    URL, process); terminated (SIGTERM) at the end."""
    port = free_port()
    command = [sys.executable, "-m", "rearm.cli", "serve", *options, "--port", str(port)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "rearm serve did not answer /health"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.2)
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=60)


@needs_serve
def test_rearm_serve_command_end_to_end(run_dir, tmp_path):
    """The real command in a subprocess: listens, answers with the key, stops on SIGTERM."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    with serve_process(str(run_dir), "--api-key-file", str(key_file)) as (url, server):
        got = httpx.get(
            f"{url}/recommend", params={"user": user_id(5), "k": 4}, headers={"X-API-Key": KEY}
        )
        assert got.json() == load_bundle(run_dir).recommend([user_id(5)], 4)[0]
        assert httpx.get(f"{url}/info").status_code == 401
    assert "serving mf (120 users, 60 items" in server.stderr.read()


@pytest.mark.slow
@needs_serve
def test_several_workers(run_dir):
    """--workers 2: uvicorn's worker processes each build the app from the options."""
    with serve_process(str(run_dir), "--workers", "2") as (url, server):
        for _ in range(4):
            got = httpx.get(f"{url}/recommend", params={"user": user_id(8), "k": 3})
            assert got.json() == load_bundle(run_dir).recommend([user_id(8)], 3)[0]
    assert "with 2 worker(s)" in server.stderr.read()


@needs_serve
def test_faiss_index_filters_seen_and_excluded(run_dir):
    pytest.importorskip("faiss")
    from rearm.serve.service import Service

    exact, approximate = Service(run_dir), Service(run_dir, index="faiss")
    assert approximate.info()["index"] == "faiss"
    bundle = exact.bundle
    users = [user_id(u) for u in range(0, 120, 7)]
    exclude = [item_id(0), item_id(1)]
    train = bundle.split("train")
    for want, got in zip(
        exact.recommend(users, 10, exclude), approximate.recommend(users, 10, exclude)
    ):
        seen = {item_id(i) for i in train[int(want["user"][1:])].indices}
        assert len(got["items"]) == 10
        assert not (seen | set(exclude)) & set(got["items"])
        # 60 items make a single inverted list, which is searched in full: same items
        assert set(got["items"]) == set(want["items"])
        np.testing.assert_allclose(sorted(got["scores"]), sorted(want["scores"]), rtol=1e-5)
    similar = approximate.similar(item_id(4), 5)
    assert item_id(4) not in similar["items"]
    assert set(similar["items"]) == set(exact.similar(item_id(4), 5)["items"])
