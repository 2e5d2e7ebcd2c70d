"""Every bad input gives one DataError line naming the file and the problem, through the API and
through `rearm data info` (exit code 2, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rearm.data import DataError, load_dataset


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _tab_ok(tmp_path: Path) -> Path:
    return _csv(tmp_path / "log.csv", "user,item,split\nu1,a,train\nu1,b,valid\nu1,c,test\n")


def _mmrec(tmp_path: Path, header: str, rows: str) -> Path:
    folder = tmp_path / "mm"
    folder.mkdir()
    (folder / "x.inter").write_text(header + "\n" + rows)
    return folder


# Each case builds a bad data set and returns
# (path, API keyword arguments, CLI flags, file named in the message, problem words).
def missing_split(tmp_path, write_rearm):
    folder = write_rearm(tmp_path / "d")
    (folder / "test.npy").unlink()
    return folder, {}, [], "test.npy", "missing test split"


def wrong_shape(tmp_path, write_rearm, tiny_pairs):
    pairs = {**tiny_pairs, "train": np.vstack([tiny_pairs["train"], tiny_pairs["train"][:1]])}
    return write_rearm(tmp_path / "d", pairs=pairs), {}, [], "train.npy", "shape (2, N)"


def wrong_dtype(tmp_path, write_rearm, tiny_pairs):
    pairs = {**tiny_pairs, "valid": tiny_pairs["valid"].astype(str)}
    return write_rearm(tmp_path / "d", pairs=pairs), {}, [], "valid.npy", "must be integers"


def negative_id(tmp_path, write_rearm, tiny_pairs):
    train = tiny_pairs["train"].copy()
    train[1, 3] = -4
    pairs = {**tiny_pairs, "train": train}
    return write_rearm(tmp_path / "d", pairs=pairs), {}, [], "train.npy", "negative item id -4"


def non_integer_id(tmp_path, write_rearm, tiny_pairs):
    test = tiny_pairs["test"].astype(np.float64)
    test[0, 0] = 0.5
    pairs = {**tiny_pairs, "test": test}
    return write_rearm(tmp_path / "d", pairs=pairs), {}, [], "test.npy", "non-integer"


def huge_unsigned_id(tmp_path, write_rearm, tiny_pairs):
    # uint64 past int64: named as the large id it is, not as a wrapped-round negative one
    train = tiny_pairs["train"].astype(np.uint64)
    train[1, 2] = 2**63 + 5
    pairs = {**tiny_pairs, "train": train}
    folder = write_rearm(tmp_path / "d", pairs=pairs)
    return folder, {}, [], "train.npy", f"item id {2**63 + 5} in train is larger than"


def out_of_range_id(tmp_path, write_rearm):
    folder = write_rearm(tmp_path / "d")
    return folder, {"num_users": 3}, ["--num-users", "3"], "train.npy", "out of range"


def feature_rows(tmp_path, write_rearm, tiny_features):
    features = {**tiny_features, "text": tiny_features["text"][:4]}
    folder = write_rearm(tmp_path / "d", features=features)
    return folder, {}, [], "text_feat.npy", "has 4 rows but the data set has 6 items"


def feature_extra_rows(tmp_path, write_rearm, tiny_features):
    features = {**tiny_features, "text": np.vstack([tiny_features["text"]] * 2)}
    folder = write_rearm(tmp_path / "d", features=features)
    return folder, {}, [], "text_feat.npy", "12 rows but the splits have 6 items"


def feature_not_2d(tmp_path, write_rearm, tiny_features):
    features = {**tiny_features, "image": tiny_features["image"].reshape(6, 2, 2)}
    return write_rearm(tmp_path / "d", features=features), {}, [], "image_feat.npy", "must be 2-D"


def feature_no_columns(tmp_path, write_rearm, tiny_features):
    features = {**tiny_features, "image": np.ones((6, 0), np.float32)}
    folder = write_rearm(tmp_path / "d", features=features)
    return folder, {}, [], "image_feat.npy", "features have no columns"


def feature_past_float32(tmp_path, write_rearm, tiny_features):
    # float64 past float32's range: one line (no numpy overflow warning before it)
    image = tiny_features["image"].astype(np.float64)
    image[3, 0] = 1e300
    folder = write_rearm(tmp_path / "d", features={"image": image})
    return folder, {}, [], "image_feat.npy", "Inf values in 1 rows (first row 3)"


def declared_size_far_too_large(tmp_path, write_rearm):
    folder = write_rearm(tmp_path / "d")
    kwargs, flags = {"num_items": 10**15}, ["--num-items", str(10**15)]
    return folder, kwargs, flags, "d", "num_items=1000000000000000 (--num-items) is far larger"


def feature_nan(tmp_path, write_rearm, tiny_features):
    image = tiny_features["image"].copy()
    image[2, 1] = np.nan
    folder = write_rearm(tmp_path / "d", features={"image": image})
    return folder, {}, [], "image_feat.npy", "NaN values in 1 rows (first row 2)"


def feature_inf(tmp_path, write_rearm, tiny_features):
    text = tiny_features["text"].copy()
    text[4, 0] = -np.inf
    folder = write_rearm(tmp_path / "d", features={"text": text})
    return folder, {}, [], "text_feat.npy", "Inf values"


def empty_train(tmp_path, write_rearm, tiny_pairs):
    pairs = {**tiny_pairs, "train": np.empty((2, 0), dtype=np.int64)}
    return write_rearm(tmp_path / "d", pairs=pairs), {}, [], "train.npy", "train split is empty"


def truncated_npy(tmp_path, write_rearm):
    folder = write_rearm(tmp_path / "d")
    data = (folder / "image_feat.npy").read_bytes()
    (folder / "image_feat.npy").write_bytes(data[:-10])
    return folder, {}, [], "image_feat.npy", "truncated"


def not_npy(tmp_path, write_rearm):
    folder = write_rearm(tmp_path / "d")
    (folder / "valid.npy").write_text("user,item\n1,2\n")
    return folder, {}, [], "valid.npy", "not a .npy file"


def pickled_npy(tmp_path, write_rearm):
    folder = write_rearm(tmp_path / "d")
    np.save(folder / "test.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return folder, {}, [], "test.npy", "Python objects"


def binary_csv(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,item,split\n" + bytes(range(256)) * 4)
    return path, {}, [], "log.csv", "binary data"


def csv_missing_column(tmp_path):
    path = _csv(tmp_path / "log.csv", "user,item,fold\nu1,a,train\n")
    return path, {}, [], "log.csv", "header lacks column(s) 'split'"


def csv_unknown_split(tmp_path):
    path = _csv(tmp_path / "log.csv", "user,item,split\nu1,a,train\nu1,b,validation\n")
    return path, {}, [], "log.csv", "unknown split label 'validation' in 1 rows"


def csv_empty_train(tmp_path):
    path = _csv(tmp_path / "log.csv", "user,item,split\nu1,b,valid\nu1,c,test\n")
    return path, {}, [], "log.csv", "train split is empty"


def csv_ragged(tmp_path):
    path = _csv(tmp_path / "log.csv", "user,item,split\nu1,a,train\nu2,b\n")
    return path, {}, [], "log.csv", "line 3 has 2 fields, the header has 3"


def csv_row_with_an_extra_field(tmp_path):
    # an unquoted comma in the title shifts user and item one column: refused, not misread
    text = "title,user,item,split\nBig hat,u1,a,train\nHat, small,u1,b,valid\nCap,u1,c,test\n"
    path = _csv(tmp_path / "log.csv", text)
    return path, {}, [], "log.csv", "line 3 has 5 fields, the header has 4"


def csv_short_row_covering_the_used_columns(tmp_path):
    path = _csv(tmp_path / "log.csv", "user,item,split,rating\nu1,a,train,5\nu1,b,valid\n")
    return path, {}, [], "log.csv", "line 3 has 3 fields, the header has 4"


def csv_float_written_id(tmp_path):
    # "1.0" and "1" would be two users; a float-written id is refused, not read as text
    path = _csv(tmp_path / "log.csv", "user,item,split\n1.0,2,train\n1,2,valid\n1,3,test\n")
    return path, {}, [], "log.csv", "column 'user': id '1.0' is a whole number written as a float"


def item_list_duplicate(tmp_path):
    path = _tab_ok(tmp_path)
    (tmp_path / "ids.txt").write_text("a\na\nb\nb\nb\nb\nb\nc\n")
    np.save(tmp_path / "img.npy", np.ones((8, 3), np.float32))
    kwargs = {"item_list": tmp_path / "ids.txt", "features": {"image": tmp_path / "img.npy"}}
    flags = ["--item-list", tmp_path / "ids.txt", "--features", f"image={tmp_path / 'img.npy'}"]
    return path, kwargs, flags, "ids.txt", "item 'a' is listed 2 times (2 duplicated ids)"


def csv_header_only(tmp_path):
    path = _csv(tmp_path / "log.csv", "user,item,split\n")
    return path, {}, [], "log.csv", "train split is empty"


def csv_header_names_a_column_twice(tmp_path):
    path = _csv(tmp_path / "log.csv", "user,item,user,split\nu1,a,u2,train\n")
    return path, {}, [], "log.csv", "names column 'user' twice"


def csv_one_column_for_two_fields(tmp_path):
    path = _tab_ok(tmp_path)
    return path, {"user_col": "item"}, ["--user-col", "item"], "log.csv", "asked for as two fields"


def item_without_features(tmp_path):
    path = _tab_ok(tmp_path)
    (tmp_path / "ids.txt").write_text("a\nb\n")
    np.save(tmp_path / "img.npy", np.ones((2, 3), np.float32))
    kwargs = {"item_list": tmp_path / "ids.txt", "features": {"image": tmp_path / "img.npy"}}
    flags = ["--item-list", tmp_path / "ids.txt", "--features", f"image={tmp_path / 'img.npy'}"]
    return path, kwargs, flags, "log.csv", "item 'c' has no features"


def npy_features_without_item_list(tmp_path):
    path = _tab_ok(tmp_path)
    np.save(tmp_path / "img.npy", np.ones((3, 3), np.float32))
    kwargs = {"features": {"image": tmp_path / "img.npy"}}
    return path, kwargs, ["--features", f"image={tmp_path / 'img.npy'}"], "img.npy", "item list"


def item_list_rows_differ(tmp_path):
    path = _tab_ok(tmp_path)
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\n")
    np.save(tmp_path / "img.npy", np.ones((3, 3), np.float32))
    kwargs = {"item_list": tmp_path / "ids.txt", "features": {"image": tmp_path / "img.npy"}}
    flags = ["--item-list", tmp_path / "ids.txt", "--features", f"image={tmp_path / 'img.npy'}"]
    return path, kwargs, flags, "img.npy", "has 3 rows but"


def mmrec_missing_column(tmp_path):
    folder = _mmrec(tmp_path, "userID\titemID\tlabel", "0\t0\t0\n")
    return folder, {}, [], "x.inter", "header lacks column(s) 'x_label'"


def mmrec_unknown_label(tmp_path):
    folder = _mmrec(tmp_path, "userID\titemID\tx_label", "0\t0\t0\n0\t1\t1\n0\t2\t3\n")
    return folder, {}, [], "x.inter", "unknown split label 3"


def mmrec_non_integer(tmp_path):
    folder = _mmrec(tmp_path, "userID\titemID\tx_label", "0\t0\t0\n0\tb7\t1\n")
    return folder, {}, [], "x.inter", "column 'itemID': non-integer value 'b7'"


def mmrec_unicode_digit(tmp_path):
    folder = _mmrec(tmp_path, "userID\titemID\tx_label", "0\t0\t0\n0\t\u00b2\t1\n")
    return folder, {}, [], "x.inter", "column 'itemID': non-integer value '\u00b2'"


def mmrec_arabic_indic_digit(tmp_path):
    # read as 3 by int(); an id must be ASCII digits
    folder = _mmrec(tmp_path, "userID\titemID\tx_label", "0\t0\t0\n0\t\u0663\t1\n")
    return folder, {}, [], "x.inter", "column 'itemID': non-integer value '\u0663'"


def mmrec_huge_id(tmp_path):
    folder = _mmrec(tmp_path, "userID\titemID\tx_label", "0\t0\t0\n0\t99999999999999999999\t1\n")
    return folder, {}, [], "x.inter", "id '99999999999999999999' is too large"


def no_layout(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    return folder, {}, [], "empty", "no data set found"


def bad_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "log.parquet"
    path.write_bytes(b"not parquet at all")
    return path, {}, [], "log.parquet", "unreadable Parquet file"


CASES = [
    missing_split,
    wrong_shape,
    wrong_dtype,
    negative_id,
    non_integer_id,
    huge_unsigned_id,
    out_of_range_id,
    feature_rows,
    feature_extra_rows,
    feature_not_2d,
    feature_no_columns,
    feature_past_float32,
    declared_size_far_too_large,
    feature_nan,
    feature_inf,
    empty_train,
    truncated_npy,
    not_npy,
    pickled_npy,
    binary_csv,
    csv_missing_column,
    csv_unknown_split,
    csv_empty_train,
    csv_ragged,
    csv_row_with_an_extra_field,
    csv_short_row_covering_the_used_columns,
    csv_float_written_id,
    item_list_duplicate,
    csv_header_only,
    csv_header_names_a_column_twice,
    csv_one_column_for_two_fields,
    item_without_features,
    npy_features_without_item_list,
    item_list_rows_differ,
    mmrec_missing_column,
    mmrec_unknown_label,
    mmrec_non_integer,
    mmrec_unicode_digit,
    mmrec_arabic_indic_digit,
    mmrec_huge_id,
    no_layout,
    bad_parquet,
]


@pytest.fixture(params=CASES, ids=[case.__name__ for case in CASES])
def bad_case(request, tmp_path):
    case = request.param
    names = case.__code__.co_varnames[: case.__code__.co_argcount]
    arguments = {
        name: tmp_path if name == "tmp_path" else request.getfixturevalue(name) for name in names
    }
    return case(**arguments)


def test_api_raises_data_error(bad_case):
    path, kwargs, _, file_name, problem = bad_case
    with pytest.raises(DataError) as error:
        load_dataset(path, **kwargs)
    message = str(error.value)
    assert file_name in message and problem in message
    assert "\n" not in message


def test_cli_exits_2_with_one_line(bad_case, run_cli):
    path, _, flags, file_name, problem = bad_case
    code, out, err = run_cli("data", "info", path, *flags)
    assert code == 2 and out == ""
    assert err.startswith("rearm: error: ") and err.count("\n") == 1, err
    assert file_name in err and problem in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["data", "synth", "--modalities", "image:0"], "dimension of 'image' must be >= 1"),
        (["data", "synth", "--modalities", "image=256"], "bad entry 'image=256'"),
        (["data", "synth", "--modalities", "image:256,image:3"], "given twice"),
        (["data", "synth", "--modalities", ""], "--modalities: empty"),
        (["data", "synth", "--users", "0"], "--users: must be >= 1"),
        (["data", "info", "X", "--features", "image"], "--features: bad entry 'image'"),
        (["data", "synth", "--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
    ],
)
def test_cli_bad_options(tmp_path, run_cli, args, problem):
    args = [arg.replace("X", str(tmp_path)) for arg in args]
    if args[1] == "synth":
        args += ["--out", str(tmp_path / "out")]
    code, _, err = run_cli(*args)
    assert code == 2 and problem in err and err.count("\n") == 1, err


def test_cli_derived_data_refuse_negative_seeds_and_unwritable_folders(tmp_path, run_cli):
    source = tmp_path / "src"
    assert run_cli("data", "synth", "--out", source, "--users", 30, "--items", 20)[0] == 0
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    commands = {
        "corrupt": ["--modality", "image", "--fraction", "0.5", "--mode", "shuffle"],
        "add-modality": ["--from", "image", "--name", "extra", "--dim", "4"],
    }
    for command, options in commands.items():
        code, _, err = run_cli("data", command, source, "--out", tmp_path / command, *options,
                               "--seed", "-1")  # fmt: skip
        assert code == 2 and "Traceback" not in err, err
        assert (
            err.strip().splitlines()[-1] == "rearm: error: --seed: must be an integer >= 0, got -1"
        )
        code, _, err = run_cli("data", command, source, "--out", blocker / "sub", *options)
        assert code == 2 and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]  # after the progress line "reading SRC"
        assert last.startswith("rearm: error: ") and str(blocker / "sub") in last, err
    code, _, err = run_cli("data", "synth", "--out", blocker / "sub", "--users", 30, "--items", 20)
    assert code == 2 and f"{blocker / 'sub'}: cannot create this folder" in err, err
    assert err.count("\n") == 1


def test_cli_missing_path_and_bad_format(tmp_path, run_cli):
    code, _, err = run_cli("data", "info", tmp_path / "nope")
    assert code == 2 and "nope: no such file or directory" in err
    code, _, err = run_cli("data", "info", tmp_path, "--format", "csv")
    assert code == 2 and "invalid choice" in err  # argparse


def test_cli_stops_quietly_when_the_reader_goes_away(rearm_dir):
    # `rearm data info DIR | head -1`: the pipe closes while rearm is still printing
    command = [sys.executable, "-m", "rearm.cli", "data", "info", str(rearm_dir)]
    reader = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    reader.stdout.close()  # before rearm writes anything: its first write hits a closed pipe
    _, err = reader.communicate(timeout=120)
    assert reader.returncode == 141, err
    assert b"Traceback" not in err
