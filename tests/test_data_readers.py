"""Readers: REARM, MMRec and tabular layouts, the dataset card and `rearm data info`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rearm.data import Dataset, describe, detect_format, load_dataset


def split_pairs(dataset: Dataset, name: str) -> set[tuple[int, int]]:
    matrix = dataset.split(name).tocoo()
    return set(zip(matrix.row.tolist(), matrix.col.tolist()))


def write_inter(path: Path, pairs: dict[str, np.ndarray], shuffle_seed: int = 0) -> Path:
    """MMRec .inter file (tab-separated, extra rating column, rows shuffled)."""
    users = np.concatenate([pairs[s][0] for s in ("train", "valid", "test")])
    items = np.concatenate([pairs[s][1] for s in ("train", "valid", "test")])
    labels = np.concatenate([np.full(pairs[s].shape[1], c) for c, s in enumerate(pairs)])
    rows = np.stack([users, np.ones_like(users) * 5, items, labels], axis=1)
    rows = rows[np.random.default_rng(shuffle_seed).permutation(len(rows))]
    header = "userID\trating\titemID\tx_label"
    np.savetxt(path, rows, fmt="%d", delimiter="\t", header=header, comments="")
    return path


def test_rearm_layout(rearm_dir, tiny_pairs, tiny_features):
    dataset = load_dataset(rearm_dir)
    assert dataset.format == "rearm"
    assert (dataset.num_users, dataset.num_items) == (5, 6)
    for name in ("train", "valid", "test"):
        assert split_pairs(dataset, name) == set(zip(*tiny_pairs[name].tolist()))
        assert dataset.split(name).dtype == np.float32
    assert sorted(dataset.features) == ["image", "text"]
    for name, array in tiny_features.items():
        np.testing.assert_array_equal(dataset.features[name], array)
        assert dataset.features[name].flags.writeable  # copy-on-write mmap, usable by torch
    assert set(dataset.files) == {"train", "valid", "test", "image_feat", "text_feat"}
    assert dataset.files["image_feat"].endswith("image_feat.npy")
    assert dataset.notes["items_without_train"] == 1  # item 5 only in valid / test


def test_any_modality_name_and_no_modality(tmp_path, write_rearm, tiny_features):
    folder = write_rearm(tmp_path / "d", features={"audio": tiny_features["text"]})
    assert load_dataset(folder).modalities == ["audio"]
    bare = write_rearm(tmp_path / "bare", features={})
    assert load_dataset(bare).features == {}


def test_mmrec_layout_matches_rearm(tmp_path, rearm_dir, tiny_pairs, tiny_features):
    folder = tmp_path / "mmrec"
    folder.mkdir()
    write_inter(folder / "tiny.inter", tiny_pairs)
    for name, array in tiny_features.items():
        np.save(folder / f"{name}_feat.npy", array)
    assert detect_format(folder) == "mmrec"
    reference = load_dataset(rearm_dir)
    for source in (folder, folder / "tiny.inter"):
        dataset = load_dataset(source)
        assert dataset.format == "mmrec"
        assert (dataset.num_users, dataset.num_items) == (reference.num_users, reference.num_items)
        assert dataset.fingerprint() == reference.fingerprint()
        assert dataset.files["interactions"].endswith("tiny.inter")


def test_declared_sizes_allow_trailing_items(tmp_path, write_rearm, tiny_features):
    features = {"image": np.vstack([tiny_features["image"], np.ones((2, 4), np.float32)])}
    folder = write_rearm(tmp_path / "d", features=features)
    dataset = load_dataset(folder, num_items=8, num_users=7)
    assert (dataset.num_users, dataset.num_items) == (7, 8)
    assert dataset.notes["items_without_interactions"] == 2


def test_duplicates_and_cross_split_repeats_are_counted(tmp_path, write_rearm, tiny_pairs):
    pairs = dict(tiny_pairs)
    pairs["train"] = np.hstack([tiny_pairs["train"], [[0, 0], [0, 0]]])  # (0, 0) twice more
    pairs["test"] = np.hstack([tiny_pairs["test"], [[0], [2]]])  # (0, 2) is a valid pair
    dataset = load_dataset(write_rearm(tmp_path / "d", pairs=pairs))
    assert dataset.notes["duplicates_within_split"] == {"train": 2, "valid": 0, "test": 0}
    assert dataset.notes["repeated_across_splits"] == {"train": 0, "valid": 0, "test": 1}
    assert dataset.train.nnz == 9 and dataset.test.nnz == 5


def tabular_rows(tiny_pairs):
    """(user, item, split) string rows with arbitrary ids for the tiny pairs."""
    user_names = np.array(["zoe", "al", "u 7", "bob", "éva"])
    item_names = np.array(["B00X", "a1", "Z-9", "0042", "m", "k2"])
    rows = [
        np.stack([user_names[p[0]], item_names[p[1]], np.full(p.shape[1], split)], axis=1)
        for split, p in tiny_pairs.items()
    ]
    return user_names, item_names, np.vstack(rows)


def write_csv(path: Path, rows: np.ndarray, header=("user", "item", "split")) -> Path:
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_same_as_tiny(dataset, tiny_pairs, user_names, item_names):
    for name, pairs in tiny_pairs.items():
        expected = set(zip(user_names[pairs[0]].tolist(), item_names[pairs[1]].tolist()))
        triples = dataset.split(name).tocoo()
        got = set(
            zip(dataset.user_ids[triples.row].tolist(), dataset.item_ids[triples.col].tolist())
        )
        assert got == expected, name


def test_tabular_csv_string_ids_round_trip(tmp_path, tiny_pairs, tiny_features):
    user_names, item_names, rows = tabular_rows(tiny_pairs)
    csv_path = write_csv(tmp_path / "log.csv", rows[::-1])
    # The item list fixes the item order and adds an item that only has features.
    listed = np.array(["k2", "m", "0042", "Z-9", "a1", "B00X", "extra"])
    (tmp_path / "ids.txt").write_text("\n".join(listed) + "\n")
    order = [int(np.flatnonzero(item_names == item)[0]) for item in listed[:-1]]
    image = np.vstack([tiny_features["image"][order], np.full((1, 4), 9, np.float32)])
    np.save(tmp_path / "img.npy", image)
    dataset = load_dataset(
        csv_path, features={"image": tmp_path / "img.npy"}, item_list=tmp_path / "ids.txt"
    )
    assert dataset.format == "tabular"
    assert dataset.item_ids.tolist() == listed.tolist()
    assert dataset.user_ids.tolist() == sorted(user_names.tolist())
    assert dataset.num_items == 7 and dataset.notes["items_without_interactions"] == 1
    assert_same_as_tiny(dataset, tiny_pairs, user_names, item_names)
    np.testing.assert_array_equal(dataset.features["image"][:6], tiny_features["image"][order])
    assert set(dataset.files) == {"interactions", "item_list", "image_feat"}
    # Reading twice, or with the rows in another order, gives the same indices.
    again = load_dataset(
        write_csv(tmp_path / "log2.csv", rows),
        features={"image": tmp_path / "img.npy"},
        item_list=tmp_path / "ids.txt",
    )
    assert again.fingerprint() == dataset.fingerprint()


def test_tabular_numeric_ids_sort_numerically(tmp_path):
    rows = np.array([["10", "2", "train"], ["9", "10", "valid"], ["10", "1", "test"]])
    dataset = load_dataset(write_csv(tmp_path / "x.csv", rows))
    assert dataset.user_ids.tolist() == ["9", "10"]
    assert dataset.item_ids.tolist() == ["1", "2", "10"]


def test_tabular_non_ascii_digit_ids_are_text(tmp_path):
    # '\u00b2' and '\u0663' pass str.isdigit() but are not numbers rearm may sort with int()
    rows = np.array([["10", "\u00b2", "train"], ["9", "2", "valid"], ["10", "\u0663", "test"]])
    dataset = load_dataset(write_csv(tmp_path / "x.csv", rows))
    assert dataset.user_ids.tolist() == ["9", "10"]
    assert dataset.item_ids.tolist() == sorted(["2", "\u00b2", "\u0663"])


def test_tabular_quoted_fields_and_empty_lines_keep_the_columns(tmp_path):
    # a quoted comma or line break inside a field is one field; empty lines are skipped
    path = tmp_path / "x.csv"
    path.write_text(
        'title,user,item,split\n"Hat, big",u1,a,train\n\n"Cap\nred",u1,b,valid\n'
        '"say ""hi""",u2,c,test\nShoe,u2,a,train\n',
        encoding="utf-8",
    )
    dataset = load_dataset(path)
    assert dataset.user_ids.tolist() == ["u1", "u2"]
    assert dataset.item_ids.tolist() == ["a", "b", "c"]
    assert split_pairs(dataset, "valid") == {(0, 1)}
    assert split_pairs(dataset, "test") == {(1, 2)}


def test_tabular_folder_convention_and_custom_columns(tmp_path, tiny_pairs, tiny_features):
    user_names, item_names, rows = tabular_rows(tiny_pairs)
    folder = tmp_path / "tab"
    folder.mkdir()
    write_csv(folder / "interactions.csv", rows, header=("who", "what", "fold"))
    (folder / "items.txt").write_text("\n".join(item_names))
    np.save(folder / "text_feat.npy", tiny_features["text"])
    assert detect_format(folder) == "tabular"
    dataset = load_dataset(folder, user_col="who", item_col="what", split_col="fold")
    assert dataset.item_ids.tolist() == item_names.tolist()
    assert_same_as_tiny(dataset, tiny_pairs, user_names, item_names)
    np.testing.assert_array_equal(dataset.features["text"], tiny_features["text"])


def test_tabular_parquet_interactions_and_features(tmp_path, tiny_pairs, tiny_features):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    user_names, item_names, rows = tabular_rows(tiny_pairs)
    folder = tmp_path / "pq"
    folder.mkdir()
    table = pa.table(
        {"user": rows[:, 0], "item": rows[:, 1], "split": rows[:, 2], "x": np.ones(len(rows))}
    )
    pq.write_table(table, folder / "interactions.parquet")
    # Features in another row order, plus an item that never interacts.
    order = np.arange(6)[::-1]
    ids = [*item_names[order].tolist(), "only-features"]
    vectors = [*tiny_features["image"][order].tolist(), [1.0, 2.0, 3.0, 4.0]]
    pq.write_table(pa.table({"item": ids, "emb": vectors}), folder / "image_feat.parquet")
    dataset = load_dataset(folder)
    assert dataset.num_items == 7
    assert_same_as_tiny(dataset, tiny_pairs, user_names, item_names)
    position = {item: index for index, item in enumerate(dataset.item_ids.tolist())}
    for row, item in enumerate(item_names):
        np.testing.assert_array_equal(
            dataset.features["image"][position[item]], tiny_features["image"][row]
        )
    np.testing.assert_array_equal(
        dataset.features["image"][position["only-features"]], [1, 2, 3, 4]
    )


def test_describe_card(rearm_dir):
    card = describe(load_dataset(rearm_dir))
    assert card["num_users"] == 5 and card["num_items"] == 6
    assert card["interactions"] == {"train": 9, "valid": 5, "test": 5, "total": 19}
    assert card["sparsity"] == pytest.approx(1 - 19 / 30)
    image = card["modalities"]["image"]
    assert image["dim"] == 4 and image["zero_rows"] == 1 and image["nonneg_fraction"] == 1.0
    assert card["modalities"]["text"]["dim"] == 3
    json.dumps(card)  # plain Python values only


def test_cli_info_text_and_json(rearm_dir, run_cli):
    code, out, err = run_cli("data", "info", rearm_dir)
    assert code == 0 and err == ""
    assert "users         5" in out and "sparsity      36.67%" in out
    assert "train 9 | valid 5 | test 5 | total 19" in out
    assert "image  dim 4" in out and "items only in valid/test: 1" in out
    code, out, _ = run_cli("data", "info", rearm_dir, "--json")
    assert code == 0 and json.loads(out)["num_items"] == 6


def test_cli_tabular_flags(tmp_path, tiny_pairs, tiny_features, run_cli):
    user_names, item_names, rows = tabular_rows(tiny_pairs)
    write_csv(tmp_path / "log.csv", rows)
    (tmp_path / "ids.txt").write_text("\n".join(item_names))
    np.save(tmp_path / "img.npy", tiny_features["image"])
    np.save(tmp_path / "txt.npy", tiny_features["text"])
    code, out, err = run_cli(
        "data", "info", tmp_path / "log.csv", "--json", "--item-list", tmp_path / "ids.txt",
        "--features", f"image={tmp_path / 'img.npy'},text={tmp_path / 'txt.npy'}",
    )  # fmt: skip
    assert code == 0, err
    card = json.loads(out)
    assert card["format"] == "tabular" and sorted(card["modalities"]) == ["image", "text"]
    assert card["interactions"]["total"] == 19
