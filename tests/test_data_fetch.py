"""`rearm data fetch`: the layout chosen from a repository listing (pure), and the whole command
end to end against a loopback Hub (tests/loopback_hub.py) on 127.0.0.1: download through the
cache, source.json, a failure mid-file (resumed, and not resumable), an offline rerun from the
cache with HF_HUB_OFFLINE=1, and one-line errors. No other network."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rearm.data import load_dataset, make_synthetic
from rearm.data.fetch import fetch_dataset, parse_source, plan_layout
from rearm.data.synth import dataset_to_pairs
from rearm.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_parse_source():
    assert parse_source("baby") == ("MrShouxingMa/Baby", None)
    assert parse_source("Clothing") == ("MrShouxingMa/Clothing", None)
    assert parse_source("hf:me/my-set@v1.0") == ("me/my-set", "v1.0")
    assert parse_source("hf:me/my_set") == ("me/my_set", None)
    for bad in ("books", "hf:noslash", "hf:a/../b", "hf:me/x@"):
        with pytest.raises(DataError):
            parse_source(bad)


def test_plan_layout():
    rearm = ["README.md", "train.npy", "valid.npy", "test.npy", "image_feat.npy", "text_feat.npy"]
    plan = plan_layout(rearm)
    assert plan.layout == "rearm" and plan.folder == ""
    assert sorted(plan.files) == sorted(rearm[1:])
    plan = plan_layout(["d/train.npy", "d/val.npy", "d/test.npy", "d/image_feat.npy", "x.txt"])
    assert plan.files["valid.npy"] == "d/val.npy" and plan.folder == "d"
    mmrec = ["baby/baby.inter", "baby/image_feat.npy", "baby/i_id_mapping.csv", "baby/x.npy"]
    plan = plan_layout(mmrec)
    assert plan.layout == "mmrec"
    assert sorted(plan.files) == ["baby.inter", "i_id_mapping.csv", "image_feat.npy"]
    both = ["a/train.npy", "a/valid.npy", "a/test.npy", "b/b.inter"]
    with pytest.raises(DataError, match="several data sets .*--subfolder"):
        plan_layout(both)
    assert plan_layout(both, subfolder="b").layout == "mmrec"
    assert plan_layout(both + ["train.npy", "valid.npy", "test.npy"]).folder == ""
    with pytest.raises(DataError, match="holds no data set rearm reads.*README.md"):
        plan_layout(["README.md", "train.npy", "a.inter", "b.inter"])


# ----------------------------------------------------------------------------------------------
# against the loopback hub

hub_module = pytest.importorskip


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(num_users=40, num_items=30, modalities={"image": 64, "text": 8}, seed=4)


@pytest.fixture
def hub(tiny):
    hub_module("huggingface_hub")
    from loopback_hub import LoopbackHub

    files = {f"{name}.npy": _npy(pairs) for name, pairs in dataset_to_pairs(tiny).items()}
    files.update({f"{name}_feat.npy": _npy(table) for name, table in tiny.features.items()})
    files["README.md"] = b"# tiny\n"
    pairs = dataset_to_pairs(tiny)
    rows = ["userID\titemID\tx_label"] + [
        f"{u}\t{i}\t{code}"
        for code, name in enumerate(("train", "valid", "test"))
        for u, i in pairs[name].T
    ]
    mmrec = {
        "tiny/tiny.inter": ("\n".join(rows) + "\n").encode(),
        "tiny/image_feat.npy": files["image_feat.npy"],
        "tiny/u_id_mapping.csv": b"user,userID\n",
    }
    repos = {
        "MrShouxingMa/Baby": {"revisions": {"main": COMMIT, "v1": COMMIT}, "files": files},
        "someone/mmrec-set": {"revisions": {"main": "f" * 40}, "files": mmrec},
    }
    with LoopbackHub(repos) as server:
        yield server


def _fetch(hub, tmp_path, name="out", source="baby", **options):
    return fetch_dataset(
        source, tmp_path / name, endpoint=hub.url, cache_dir=tmp_path / "cache", **options
    )


def test_fetch_writes_a_validated_data_set_with_source_json(hub, tiny, tmp_path):
    result = _fetch(hub, tmp_path, revision="v1")
    out = tmp_path / "out"
    assert load_dataset(out).fingerprint() == tiny.fingerprint()
    record = json.loads((out / "source.json").read_text())
    assert record["commit"] == COMMIT and record["revision"] == "v1"
    assert record["layout"] == "rearm" and not record["from_cache_only"]
    names = sorted(entry["name"] for entry in record["files"])
    assert names == ["image_feat.npy", "test.npy", "text_feat.npy", "train.npy", "valid.npy"]
    for entry in record["files"]:
        digest = hashlib.sha256((out / entry["name"]).read_bytes()).hexdigest()
        assert entry["sha256"] == digest
    assert not (out / "README.md").exists()
    assert result["card"]["num_items"] == 30
    methods = [method for method, path, _ in hub.log if path.endswith("image_feat.npy")]
    assert methods == ["HEAD", "GET"]
    # fetched again into another folder: served from the cache, no second download
    hub.log.clear()
    _fetch(hub, tmp_path, name="again")
    assert not [entry for entry in hub.log if entry[0] == "GET" and "/resolve/" in entry[1]]


def test_fetch_mmrec_layout_from_a_subfolder(hub, tmp_path):
    result = _fetch(hub, tmp_path, source="hf:someone/mmrec-set")
    assert result["layout"] == "mmrec" and result["subfolder"] == "tiny"
    dataset = load_dataset(tmp_path / "out")
    assert dataset.format == "mmrec" and dataset.modalities == ["image"]
    assert (tmp_path / "out" / "u_id_mapping.csv").exists()


@pytest.fixture
def small_chunks(monkeypatch):
    """Download in 512-byte chunks so that a cut mid-file leaves bytes to resume from."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 512)


def test_failure_mid_file_is_resumed(hub, tiny, tmp_path, small_chunks):
    hub.cut_once.add("image_feat.npy")
    _fetch(hub, tmp_path)
    assert load_dataset(tmp_path / "out").fingerprint() == tiny.fingerprint()
    ranges = [rng for method, path, rng in hub.log if path.endswith("image_feat.npy") and rng]
    assert ranges and ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"


def test_failure_mid_file_leaves_no_complete_looking_folder(hub, tmp_path, small_chunks, run_cli):
    hub.cut_once.add("text_feat.npy")
    hub.refuse_resume = True
    code, _, err = run_cli(
        "data",
        "fetch",
        "baby",
        "--out",
        tmp_path / "out",
        "--endpoint",
        hub.url,
        "--cache-dir",
        tmp_path / "cache",
    )
    lines = [line for line in err.splitlines() if line.startswith("rearm: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "download of text_feat.npy failed" in lines[0]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    blobs = list((tmp_path / "cache").rglob("*.incomplete"))
    assert blobs == []
    hub.refuse_resume = False
    assert (
        run_cli(
            "data",
            "fetch",
            "baby",
            "--out",
            tmp_path / "out",
            "--endpoint",
            hub.url,
            "--cache-dir",
            tmp_path / "cache",
        )[0]
        == 0
    )
    assert (tmp_path / "out" / "source.json").exists()


def test_offline_rerun_from_cache(hub, tiny, tmp_path):
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": hub.url,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_HUB_OFFLINE", None)
    command = [sys.executable, "-m", "rearm.cli", "data", "fetch", "baby", "--out"]
    online = subprocess.run(
        [*command, str(tmp_path / "online")], env=env, capture_output=True, text=True, timeout=120
    )
    assert online.returncode == 0, online.stderr
    assert (tmp_path / "hf" / "hub" / "datasets--MrShouxingMa--Baby").is_dir()
    hub.log.clear()
    offline = subprocess.run(
        [*command, str(tmp_path / "offline"), "--json"],
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert offline.returncode == 0, offline.stderr
    assert hub.log == []  # not one request
    record = json.loads(offline.stdout)
    assert record["from_cache_only"] and record["commit"] == COMMIT
    online_record = json.loads((tmp_path / "online" / "source.json").read_text())
    assert record["files"] == online_record["files"]
    assert load_dataset(tmp_path / "offline").fingerprint() == tiny.fingerprint()
    missing = subprocess.run(
        [*command, str(tmp_path / "x"), "--revision", "v2"],
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("rearm: error:")
    assert "offline mode" in missing.stderr and "'v2' is not in the cache" in missing.stderr


@pytest.mark.parametrize(
    "source, options, words",
    [
        ("hf:nobody/nothing", {}, "no such dataset repository"),
        ("baby", {"revision": "v9"}, "revision not found"),
    ],
)
def test_hub_errors_are_one_line(hub, tmp_path, run_cli, source, options, words):
    flags = [f"--{key}={value}" for key, value in options.items()]
    code, _, err = run_cli(
        "data",
        "fetch",
        source,
        "--out",
        tmp_path / "out",
        "--endpoint",
        hub.url,
        "--cache-dir",
        tmp_path / "cache",
        *flags,
    )
    lines = [line for line in err.splitlines() if line.startswith("rearm: error:")]
    assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert not (tmp_path / "out").exists()


def test_no_network_and_empty_cache(tmp_path, run_cli):
    hub_module("huggingface_hub")
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run_cli(
        "data",
        "fetch",
        "baby",
        "--out",
        tmp_path / "out",
        "--endpoint",
        f"http://127.0.0.1:{port}",
        "--cache-dir",
        tmp_path / "cache",
    )
    lines = [line for line in err.splitlines() if line.startswith("rearm: error:")]
    assert code == 2 and len(lines) == 1, err
    assert "the Hub is unreachable" in lines[0] and "not in the cache" in lines[0]


def test_disk_full_and_folder_rules(hub, tmp_path, monkeypatch, run_cli):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(DataError, match="disk full: the data set needs"):
        _fetch(hub, tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", real)
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="holds no data set"):
        _fetch(hub, tmp_path, name="other", force=True)
    _fetch(hub, tmp_path)
    with pytest.raises(DataError, match="--force"):
        _fetch(hub, tmp_path)
    _fetch(hub, tmp_path, force=True, source="hf:someone/mmrec-set")
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[0] == "image_feat.npy"
    assert not (tmp_path / "out" / "train.npy").exists()


def test_missing_extra_names_it(monkeypatch, tmp_path, run_cli):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    code, _, err = run_cli("data", "fetch", "baby", "--out", tmp_path / "out")
    assert code == 2 and "pip install 'rearm[hub]'" in err


def test_unreachable_hub_falls_back_to_the_cache(hub, tiny, tmp_path):
    import socket

    _fetch(hub, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = fetch_dataset(
        "baby",
        tmp_path / "later",
        endpoint=f"http://127.0.0.1:{port}",
        cache_dir=tmp_path / "cache",
    )
    assert result["from_cache_only"] and result["commit"] == COMMIT
    assert load_dataset(tmp_path / "later").fingerprint() == tiny.fingerprint()
