"""Study specifications: a base run configuration crossed with axes, variants, models, data sets
and seeds, expanded into rows (what a table shows) and cells (one run per row and seed).

A spec is YAML with the keys of a run's `config.yaml` plus:

  name, description   free text
  models              list of model names (instead of `model`)
  data                a path or a list of paths (null / omitted: the synthetic default)
  seeds               a count (3 = 2025, 2026, 2027) or a list of seeds (default 3)
  variants            {row name: {key: value, ...}}: named rows, e.g. the ablations; a variant
                      may name its own `model` (rows of several models in one table)
  axes                {key: [values]} (one group, cartesian product; a `zip:` entry
                      {key: [...], key2: [...]} varies its keys together) or a list of such
                      groups, each swept on its own (the union of their rows)
  reference           the row the report compares against (default: "full", else the first)
  corruption          {modality, mode, fractions: [P, ...], seed}: replace each data set by its
                      derived copies, one per fraction P (`rearm data corrupt`), which the
                      engine writes under STUDY_DIR/data/ (rearm.studies.derive); the report
                      then draws each row's metric against P

Keys inside variants and axes are the `--set` keys of `rearm train` (a hyperparameter, a training
key, `section.key`, or `protocol`). Every cell's configuration is resolved (names, types and
domains checked) before anything runs, so a bad spec stops with one line naming the problem.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rearm.errors import ConfigError
from rearm.io import load_yaml
from rearm.experiments.config import RunConfig, resolve_config

SPEC_KEYS = (
    "name",
    "description",
    "model",
    "models",
    "data",
    "preset",
    "protocol",
    "seed",
    "seeds",
    "device",
    "training",
    "hyperparameters",
    "variants",
    "axes",
    "reference",
    "corruption",
)
CORRUPTION_KEYS = ("modality", "mode", "fractions", "seed")
DEFAULT_SEEDS = 3
FIRST_SEED = 2025
# Keys that have their own spec entry and cannot vary along an axis or variant.
_NOT_AXIS = {"model": "models", "data": "data", "seed": "seeds", "device": "--device"}
# ... except that a variant may name its model
_NOT_VARIANT = {k: v for k, v in _NOT_AXIS.items() if k != "model"}


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str = ""
    models: tuple[str, ...] = ("rearm",)
    data: tuple[str | None, ...] = (None,)
    preset: str | None = None
    protocol: str | None = None
    device: str | None = None
    seeds: tuple[int, ...] = tuple(range(FIRST_SEED, FIRST_SEED + DEFAULT_SEEDS))
    training: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)  # name -> {key: value}
    groups: tuple = ()  # each: list of dimensions, a dimension = list of {key: value} points
    reference: str | None = None
    overrides: tuple[str, ...] = ()  # `--set key=value` of the command line, for every row
    corruption: dict | None = None  # derived data sets per fraction (see the module doc)

    @property
    def kind(self) -> str:
        """ "sweep" (axes over settings: the report chooses the valid-best row) or "comparison"
        (variants, models, or axes over the protocol only, which is not a setting to select)."""
        keys = {key for group in self.groups for dim in group for point in dim for key in point}
        return "sweep" if keys - {"protocol"} else "comparison"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "models": list(self.models),
            "data": list(self.data),
            "preset": self.preset,
            "protocol": self.protocol,
            "seeds": list(self.seeds),
            "training": dict(self.training),
            "hyperparameters": dict(self.hyperparameters),
            "variants": {k: dict(v) for k, v in self.variants.items()},
            "axes": [[list(dim) for dim in group] for group in self.groups],
            "reference": self.reference,
            "overrides": list(self.overrides),
            "corruption": dict(self.corruption) if self.corruption else None,
        }

    @property
    def all_models(self) -> tuple[str, ...]:
        """The models of the study: `models` and those that variants name."""
        named = [v["model"] for v in self.variants.values() if "model" in v]
        return tuple(dict.fromkeys([*self.models, *named]))


@dataclass(frozen=True)
class Row:
    """One line of the study's table: a configuration, repeated over the seeds."""

    index: int
    label: str
    data: str | None
    data_label: str
    model: str
    group: int | None  # axis group of a sweep row, else None
    values: dict  # axis key -> value (sweeps) / variant overrides


@dataclass(frozen=True)
class Cell:
    """One run: a row at one seed. `key` hashes the resolved config and the data fingerprint."""

    row: int
    seed: int
    config: RunConfig
    key: str
    dirname: str


def parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    """A count n (-> 2025 .. 2025 + n - 1) or a list of distinct integer seeds."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: seeds must be a count or a list of integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{where}: seeds count must be >= 1, got {value}")
        return tuple(range(FIRST_SEED, FIRST_SEED + value))
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: seeds is empty")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in value):
            raise ConfigError(f"{where}: seeds must be integers, got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: seeds repeat a value: {value!r}")
        return tuple(value)
    raise ConfigError(f"{where}: seeds must be a count or a list of integers, got {value!r}")


def parse_seeds_option(text: str) -> tuple[int, ...]:
    """--seeds: "3" is a count, "2025,2026" (any comma) a list."""
    try:
        value = [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
    except ValueError:
        raise ConfigError(
            f"--seeds: expected a count or a comma-separated list, got {text!r}"
        ) from None
    return parse_seeds(value, "--seeds")  # its own message for a repeat or a count < 1


def spec_from_dict(content: Any, where: str) -> StudySpec:
    """Validate the structure of a spec mapping (keys, types, non-empty axes)."""
    if not isinstance(content, dict):
        raise ConfigError(f"{where}: a study spec must be a mapping, got {type(content).__name__}")
    unknown = [key for key in content if key not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(SPEC_KEYS)})")
    name = content.get("name", "study")
    _expect(name, str, f"{where}: name")
    if "model" in content and "models" in content:
        raise ConfigError(f"{where}: give either model or models, not both")
    models = content.get("models", [content.get("model", "rearm")])
    if not isinstance(models, list) or not models:
        raise ConfigError(f"{where}: models must be a non-empty list of model names")
    for model in models:
        _expect(model, str, f"{where}: models")
    if len(set(models)) != len(models):
        raise ConfigError(f"{where}: models repeat a name: {models!r}")
    data = content.get("data")
    data = data if isinstance(data, list) else [data]
    if not data:
        raise ConfigError(f"{where}: data is an empty list")
    for path in data:
        if path is not None:
            _expect(path, str, f"{where}: data")
    if "seed" in content and "seeds" in content:
        raise ConfigError(f"{where}: give either seed or seeds, not both")
    if "seed" in content:
        seeds = parse_seeds([content["seed"]], f"{where}: seed")
    else:
        seeds = parse_seeds(content.get("seeds", DEFAULT_SEEDS), f"{where}: seeds")
    for key in ("preset", "protocol", "device", "description", "reference"):
        if content.get(key) is not None:
            _expect(content[key], str, f"{where}: {key}")
    sections = {}
    for key in ("training", "hyperparameters"):
        value = content.get(key)
        value = {} if value is None else value  # `training:` with nothing under it
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping of keys to values")
        sections[key] = value
    variants = content.get("variants")
    variants = {} if variants is None else variants
    if not isinstance(variants, dict):
        raise ConfigError(f"{where}: variants must be a mapping of row names to settings")
    for variant, settings in variants.items():
        _expect(variant, str, f"{where}: variants: row name")
        if settings is not None and not isinstance(settings, dict):
            raise ConfigError(f"{where}: variants.{variant} must be a mapping of keys to values")
        for key in settings or {}:
            _check_axis_key(key, f"{where}: variants.{variant}", _NOT_VARIANT)
        if "model" in (settings or {}):
            _expect(settings["model"], str, f"{where}: variants.{variant}.model")
            if len(models) > 1:
                raise ConfigError(
                    f"{where}: variants.{variant} names a model; then give no models list"
                )
    variants = {k: dict(v or {}) for k, v in variants.items()}
    if "variants" in content and not variants:
        raise ConfigError(f"{where}: variants is empty")
    groups = _parse_axes(content["axes"], where) if "axes" in content else ()
    if groups and variants:
        raise ConfigError(f"{where}: give either axes (a sweep) or variants, not both")
    corruption = _parse_corruption(content.get("corruption"), where)
    return StudySpec(
        corruption=corruption,
        name=name,
        description=content.get("description") or "",
        models=tuple(models),
        data=tuple(data),
        preset=content.get("preset"),
        protocol=content.get("protocol"),
        device=content.get("device"),
        seeds=seeds,
        training=sections["training"],
        hyperparameters=sections["hyperparameters"],
        variants=variants,
        groups=groups,
        reference=content.get("reference"),
    )


def read_spec(path: str | os.PathLike) -> StudySpec:
    try:
        content = load_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: study spec not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read study spec ({error})") from None
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0] if str(error) else "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    return spec_from_dict(content if content is not None else {}, str(path))


def _parse_axes(axes: Any, where: str) -> tuple:
    groups = axes if isinstance(axes, list) else [axes]
    if not groups:
        raise ConfigError(f"{where}: axes is empty")
    parsed = []
    for number, group in enumerate(groups):
        label = f"{where}: axes" + (f"[{number}]" if isinstance(axes, list) else "")
        if not isinstance(group, dict) or not group:
            raise ConfigError(f"{label}: expected a non-empty mapping of keys to lists of values")
        dimensions = []
        for key, values in group.items():
            if key == "zip":
                dimensions.append(_zip_dimension(values, f"{label}.zip"))
                continue
            _check_axis_key(key, label)
            dimensions.append([{key: value} for value in _axis_values(values, f"{label}.{key}")])
        parsed.append(tuple(tuple(dim) for dim in dimensions))
    return tuple(parsed)


def _zip_dimension(values: Any, label: str) -> list[dict]:
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"{label}: expected a mapping of keys to equally long lists")
    lists = {}
    for key, items in values.items():
        _check_axis_key(key, label)
        lists[key] = _axis_values(items, f"{label}.{key}")
    lengths = {len(items) for items in lists.values()}
    if len(lengths) != 1:
        raise ConfigError(f"{label}: lists must have equal lengths, got {sorted(lengths)}")
    return [dict(zip(lists, point)) for point in zip(*lists.values())]


def _axis_values(values: Any, label: str) -> list:
    if not isinstance(values, list):
        raise ConfigError(f"{label}: expected a list of values, got {values!r}")
    if not values:
        raise ConfigError(f"{label}: empty axis (give at least one value)")
    return values


def _check_axis_key(key: Any, label: str, forbidden: Mapping[str, str] = _NOT_AXIS) -> None:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{label}: keys must be names, got {key!r}")
    if key in forbidden:
        raise ConfigError(f"{label}: {key!r} cannot vary here (use {forbidden[key]})")


def _parse_corruption(value: Any, where: str) -> dict | None:
    """{modality, mode, fractions, seed} checked for shape here; the data set checks the
    modality when the engine derives the copies."""
    from rearm.data.corrupt import MODES

    if value is None:
        return None
    label = f"{where}: corruption"
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: expected a mapping with {', '.join(CORRUPTION_KEYS)}")
    unknown = [key for key in value if key not in CORRUPTION_KEYS]
    if unknown:
        raise ConfigError(
            f"{label}: unknown key {unknown[0]!r} (known: {', '.join(CORRUPTION_KEYS)})"
        )
    for key in ("modality", "mode", "fractions"):
        if key not in value:
            raise ConfigError(f"{label}: {key} is missing")
    _expect(value["modality"], str, f"{label}.modality")
    if value["mode"] not in MODES:
        raise ConfigError(
            f"{label}.mode: expected one of {', '.join(MODES)}, got {value['mode']!r}"
        )
    fractions = _axis_values(value["fractions"], f"{label}.fractions")
    for fraction in fractions:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ConfigError(f"{label}.fractions: expected numbers in [0, 1], got {fraction!r}")
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"{label}.fractions: {fraction!r} is outside [0, 1]")
    if len(set(fractions)) != len(fractions):
        raise ConfigError(f"{label}.fractions: a value repeats: {fractions!r}")
    seed = value.get("seed", 0)
    _expect(seed, int, f"{label}.seed")
    if seed < 0:
        raise ConfigError(f"{label}.seed must be >= 0, got {seed}")
    return {
        "modality": value["modality"],
        "mode": value["mode"],
        "fractions": [float(f) for f in fractions],
        "seed": seed,
    }


def _expect(value: Any, kind: type, label: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{label} must be {kind.__name__}, got {value!r}")


def data_label(path: str | None) -> str:
    return "synthetic" if path is None else Path(path).name or str(path)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def expand_rows(spec: StudySpec) -> list[Row]:
    """Rows in table order: data set, model, then variants or each axis group's points."""
    rows: list[Row] = []
    for path in spec.data:
        for model in spec.models:
            prefix = ([data_label(path)] if len(spec.data) > 1 else []) + (
                [model] if len(spec.models) > 1 else []
            )
            points: list[tuple[int | None, str | None, dict]] = []
            if spec.variants:
                points = [(None, name, values) for name, values in spec.variants.items()]
            elif spec.groups:
                for number, group in enumerate(spec.groups):
                    for combination in itertools.product(*group):
                        values = {k: v for point in combination for k, v in point.items()}
                        name = " ".join(f"{k}={_format_value(v)}" for k, v in values.items())
                        points.append((number, name, values))
            else:
                points = [(None, None, {})]
            for group, name, values in points:
                label = " ".join(prefix + ([name] if name else [])) or model
                values = dict(values)
                row_model = values.pop("model", model)
                rows.append(Row(len(rows), label, path, data_label(path), row_model, group, values))
    return rows


def resolve_cell_config(spec: StudySpec, row: Row, seed: int, where: str) -> RunConfig:
    """The run configuration of `row` at `seed`, resolved exactly as `rearm train` would."""
    from rearm.models.presets import PRESETS

    overrides = [
        f"{key}={json.dumps(value)}"
        for key, value in (
            [("protocol", spec.protocol)] if spec.protocol else []
        )  # as an override so that a protocol axis can change it
    ]
    overrides += [f"training.{k}={json.dumps(v)}" for k, v in spec.training.items()]
    overrides += [f"hyperparameters.{k}={json.dumps(v)}" for k, v in spec.hyperparameters.items()]
    overrides += list(spec.overrides)
    overrides += [f"{k}={json.dumps(v)}" for k, v in row.values.items()]
    preset = spec.preset if spec.preset in PRESETS.get(row.model, {}) else None
    try:
        return resolve_config(
            overrides=overrides, model=row.model, data=row.data, preset=preset, seed=seed
        )
    except ConfigError as error:
        raise ConfigError(f"{where}: row {row.label!r}: {error}") from None


def check_preset(spec: StudySpec, where: str) -> None:
    """A preset applies to the models that define it (baselines publish one setting for every
    data set); a preset that no model of the study defines is an error."""
    from rearm.models.presets import PRESETS

    models = spec.all_models
    if spec.preset and not any(spec.preset in PRESETS.get(m, {}) for m in models):
        known = sorted({p for m in models for p in PRESETS.get(m, {})})
        raise ConfigError(
            f"{where}: preset {spec.preset!r} is defined for none of the models "
            f"{', '.join(models)} (known: {', '.join(known) or 'none'})"
        )


# training keys added after studies were first keyed, with their defaults
_LATER_TRAINING_KEYS = {"max_steps_per_epoch": 0}


def cell_key(config: Mapping, fingerprint: str) -> str:
    """SHA-256 of the resolved configuration (without the device, the data path and how often
    resume states are saved, which do not change what is computed; without training keys at
    their defaults that were added later, so earlier studies keep their keys) and the data set's
    content fingerprint."""
    record = {k: v for k, v in dict(config).items() if k not in ("device", "data")}
    if isinstance(record.get("training"), Mapping):
        record["training"] = {
            k: v
            for k, v in record["training"].items()
            if k != "resume_every_s"
            and not (k in _LATER_TRAINING_KEYS and v == _LATER_TRAINING_KEYS[k])
        }
    text = json.dumps({"config": record, "data": fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _dirname(label: str, seed: int, key: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._=+-]+", "_", label.replace(" ", "-"))[:80]
    return f"{readable}-s{seed}-{key[:8]}"


def names_a_row(reference: str, rows: list[tuple[str, str]]) -> bool:
    """True if `reference` is a row's label, or, with several data sets (labels "<data> <name>"),
    the name of a row in each of them ("full" for "baby full" and "sports full")."""
    if reference in {label for label, _ in rows}:
        return True
    names: dict[str, set[str]] = {}
    for label, data in rows:
        bare = label[len(data) + 1 :] if label.startswith(data + " ") else label
        names.setdefault(data, set()).add(bare)
    return len(names) > 1 and all(reference in found for found in names.values())


def expand_cells(
    spec: StudySpec, fingerprints: Mapping[str | None, str], where: str = "spec"
) -> tuple[list[Row], list[Cell]]:
    """Rows and cells (rows x seeds), every config resolved. `fingerprints` maps each data path of
    the spec to its Dataset.fingerprint(). Two rows that resolve to the same configuration share
    one run (same key and directory)."""
    check_preset(spec, where)
    rows = expand_rows(spec)
    labels = [row.label for row in rows]
    duplicate = next((label for label in labels if labels.count(label) > 1), None)
    if duplicate:
        raise ConfigError(f"{where}: two rows are both named {duplicate!r}")
    if spec.reference is not None and not names_a_row(
        spec.reference, [(row.label, row.data_label) for row in rows]
    ):
        raise ConfigError(
            f"{where}: reference {spec.reference!r} is not a row (rows: {', '.join(labels)})"
        )
    cells: list[Cell] = []
    directories: dict[str, str] = {}
    for row in rows:
        for seed in spec.seeds:
            config = resolve_cell_config(spec, row, seed, where)
            key = cell_key(config.to_dict(), fingerprints[row.data])
            dirname = directories.setdefault(key, _dirname(row.label, seed, key))
            cells.append(Cell(row.index, seed, config, key, dirname))
    return rows, cells
