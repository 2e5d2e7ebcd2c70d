"""Run configuration, resolved once at the CLI / experiment edge.

Precedence, lowest first: built-in defaults < the model's training defaults < preset < config file
< --set key=value < explicit CLI flags (--epochs, --seed, ...). The result is a frozen RunConfig
whose `hyperparameters` are the model's from_dataset keywords, checked by name and type.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import yaml

from rearm.data.synth import is_synthetic_recipe
from rearm.errors import ConfigError
from rearm.io import load_yaml
from rearm.models import MODEL_NAMES, get_model
from rearm.models.base import Range, check_type, describe_annotation, meaning_of
from rearm.models.presets import get_preset

TRAINING_TYPES: dict[str, Any] = {
    "epochs": Annotated[int, Range(ge=1), "most epochs to train"],
    "patience": Annotated[int, Range(ge=1), "early stop after this many epochs without gain"],
    "batch_size": Annotated[int, Range(ge=1), "training triples per step"],
    "learning_rate": Annotated[float, Range(gt=0), "AdamW learning rate"],
    "weight_decay": Annotated[float, Range(ge=0), "AdamW weight decay"],
    "eval_batch_size": Annotated[int, Range(ge=1), "users per block when ranking"],
    "eval_every": Annotated[
        int,
        Range(ge=1),
        "validate every N epochs (and after the last); patience counts validations",
    ],
    "precision": Annotated[
        Literal["fp32", "bf16"], "bf16: bfloat16 autocast (changes the numbers; for GPUs)"
    ],
    "cuda_graph": Annotated[
        bool, "capture the training step in a CUDA graph on a GPU (same numbers)"
    ],
    "memory_check": Annotated[
        bool,
        "refuse, before building anything, a run whose planned peak memory (rearm plan) exceeds "
        "the memory available",
    ],
    "resume_every_s": Annotated[
        float,
        Range(ge=0),
        "write RUN_DIR/resume.pt (what `rearm train --resume` continues from) at most this often, "
        "in seconds of training, and when a stop signal ends training; 0: never",
    ],
    "max_steps_per_epoch": Annotated[
        int,
        Range(ge=0),
        "train each epoch on its first N batches only, then validate as usual (a short run that "
        "goes through every phase of a long one at full size); 0: the whole epoch",
    ],
}
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 2000,
    "patience": 20,
    "batch_size": 2048,
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "eval_batch_size": 1024,
    "eval_every": 1,
    "precision": "fp32",
    "cuda_graph": True,
    "memory_check": True,
    "resume_every_s": 1800.0,
    "max_steps_per_epoch": 0,
}
TOP_LEVEL_TYPES: dict[str, Any] = {
    "model": Annotated[Literal[MODEL_NAMES], "model to train"],
    "data": Annotated[str | None, "data set path (null: the synthetic default)"],
    "preset": Annotated[str | None, "published settings by data set (see presets)"],
    "protocol": Annotated[Literal["standard", "reference"], "negative sampling and masking"],
    # numpy seeds must fit in 32 bits
    "seed": Annotated[int, Range(ge=0, le=2**32 - 1), "seed for python, numpy and torch"],
    "device": Annotated[str, "auto, cpu or cuda[:N]"],
    "modalities": Annotated[
        list[str] | None, "the data set's modalities to use, in this order (null: all of them)"
    ],
}
TOP_LEVEL_DEFAULTS: dict[str, Any] = {
    "model": "rearm",
    "data": None,
    "preset": None,
    "protocol": "standard",
    "seed": 2025,
    "device": "auto",
    "modalities": None,
}
SECTIONS = ("training", "hyperparameters")


@dataclass(frozen=True)
class RunConfig:
    model: str = "rearm"
    data: str | None = None
    preset: str | None = None
    protocol: str = "standard"
    seed: int = 2025
    device: str = "auto"
    training: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    modalities: list[str] | None = None

    def to_dict(self) -> dict:
        """The configuration as config.yaml holds it (`modalities` only when set, so configs
        that use every modality, and study cell keys hashed from them, stay as they were)."""
        return {
            "model": self.model,
            "data": self.data,
            "preset": self.preset,
            "protocol": self.protocol,
            "seed": self.seed,
            "device": self.device,
            **({"modalities": list(self.modalities)} if self.modalities is not None else {}),
            "training": dict(self.training),
            "hyperparameters": dict(self.hyperparameters),
        }


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML run configuration; structural problems are ConfigErrors naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = load_yaml(handle.read())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file ({error})") from None
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0] if str(error) else "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(content).__name__}")
    for key, value in content.items():
        if key in SECTIONS:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{path}: {key} must be a mapping of keys to values")
        elif key not in TOP_LEVEL_TYPES:
            known = ", ".join(list(TOP_LEVEL_TYPES) + list(SECTIONS))
            raise ConfigError(f"{path}: unknown key {key!r} (known: {known})")
    return content


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, YAML-parsed value): numbers, booleans, null and lists as in YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.constructor.ConstructorError as error:  # e.g. a mapping naming a key twice
        raise ConfigError(f"--set {key}: {str(error).splitlines()[0]}") from None
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve_config(
    *,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    **flags: Any,
) -> RunConfig:
    """Resolve a RunConfig. `flags` are explicit CLI values (None = not given): model, data,
    preset, protocol, seed, device, epochs, patience."""
    from rearm.evaluation.protocol import get_protocol

    file_values = read_config_file(config_file) if config_file else {}
    label = config_file or "config"
    top = dict(TOP_LEVEL_DEFAULTS)
    top.update({k: v for k, v in file_values.items() if k in TOP_LEVEL_TYPES})
    parsed = [parse_override(text) for text in overrides]
    for key, value in parsed:
        if key in TOP_LEVEL_TYPES:
            top[key] = value
    top.update({k: v for k, v in flags.items() if k in TOP_LEVEL_TYPES and v is not None})
    for key, annotation in TOP_LEVEL_TYPES.items():
        top[key] = check_type(top[key], annotation, f"{label}: {key}")
    if top["modalities"] is not None:
        names = top["modalities"]
        repeated = next((name for name in names if names.count(name) > 1), None)
        if not names or repeated:
            problem = f"{repeated!r} given twice" if repeated else "empty list"
            raise ConfigError(
                f"{label}: modalities: {problem} (give modality names, or null for all)"
            )

    if (top["data"] is None or is_synthetic_recipe(top["data"])) and top["preset"] is None:
        # the embedded synthetic default (and a synthetic recipe) trains with the model's
        # "synthetic" preset
        from rearm.models.presets import PRESETS, SYNTHETIC_PRESET

        if SYNTHETIC_PRESET in PRESETS.get(top["model"], {}):
            top["preset"] = SYNTHETIC_PRESET
    model_class = get_model(top["model"])
    known_hyper = model_class.hyperparameters()
    training = dict(TRAINING_DEFAULTS)
    training.update(getattr(model_class, "training_defaults", {}))
    hyper: dict[str, Any] = {}
    if top["preset"]:
        preset = get_preset(top["model"], top["preset"])
        training.update(preset.get("training", {}))
        hyper.update(preset.get("hyperparameters", {}))
    for section, target in (("training", training), ("hyperparameters", hyper)):
        values = file_values.get(section) or {}
        if section == "training":
            _check_known(values, TRAINING_TYPES, f"{label}: training")
        target.update(values)
    for key, value in parsed:
        if key in TOP_LEVEL_TYPES:
            continue
        section, _, name = key.rpartition(".")
        if section == "training" or (not section and name in TRAINING_TYPES):
            _check_known({name: value}, TRAINING_TYPES, f"--set {key}")
            training[name] = value
        elif section == "hyperparameters" or (not section and name in known_hyper):
            hyper[name] = value
        else:
            raise ConfigError(
                f"--set {key}: unknown key (not a training key, not a hyperparameter of "
                f"model {top['model']!r}, not one of {', '.join(TOP_LEVEL_TYPES)})"
            )
    for name in ("epochs", "patience"):
        if flags.get(name) is not None:
            training[name] = flags[name]
    for name, annotation in TRAINING_TYPES.items():
        training[name] = check_type(training[name], annotation, f"{label}: training.{name}")
    hyper = model_class.validate_hyperparameters(hyper, where=f"{label}: hyperparameters")
    get_protocol(top["protocol"])
    if top["device"] not in ("auto", "cpu") and not top["device"].startswith("cuda"):
        raise ConfigError(f"--device: expected auto, cpu or cuda[:N], got {top['device']!r}")
    return RunConfig(training=training, hyperparameters=hyper, **top)


def config_keys(model: str = "rearm", preset: str | None = None) -> list[dict[str, Any]]:
    """Every key `model` accepts: {key, section, domain, default, meaning}, generated from the
    declarations (TOP_LEVEL_TYPES, TRAINING_TYPES, the model's from_dataset annotations); with
    `preset`, defaults are the preset's values."""
    model_class = get_model(model)
    training = dict(TRAINING_DEFAULTS) | dict(getattr(model_class, "training_defaults", {}))
    hyper = {name: default for name, (_, default) in model_class.hyperparameters().items()}
    top = dict(TOP_LEVEL_DEFAULTS, model=model, preset=preset)
    if preset is not None:
        values = get_preset(model, preset)
        training.update(values.get("training", {}))
        hyper.update(values.get("hyperparameters", {}))
    sections = (
        ("", TOP_LEVEL_TYPES, top),
        ("training", TRAINING_TYPES, training),
        ("hyperparameters", {k: a for k, (a, _) in model_class.hyperparameters().items()}, hyper),
    )
    return [
        {
            "key": name,
            "section": section,
            "domain": describe_annotation(annotation),
            "default": defaults.get(name),
            "meaning": meaning_of(annotation),
        }
        for section, annotations, defaults in sections
        for name, annotation in annotations.items()
    ]


def _check_known(values: Mapping[str, Any], known: Mapping[str, Any], label: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{label}: unknown key {unknown[0]!r} (known: {', '.join(known)})")


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
