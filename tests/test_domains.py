"""Declared hyperparameter domains: Annotated[type, Range(...)] next to the default."""

from typing import Annotated

import pytest

from rearm.errors import ConfigError
from rearm.models.base import Range, check_type, describe_annotation


@pytest.mark.parametrize(
    ("domain", "inside", "outside"),
    [
        (Range(gt=0), [1e-9, 3.0], [0.0, -1.0, float("inf"), float("nan")]),
        (Range(ge=0, le=1), [0.0, 0.5, 1.0], [-1e-9, 1.0000001]),
        (Range(ge=1), [1, 7], [0, -2]),
        (Range(ge=0, lt=1), [0.0, 0.99], [1.0]),
    ],
)
def test_range_bounds(domain, inside, outside):
    for value in inside:
        assert domain.contains(value), value
    for value in outside:
        assert not domain.contains(value), value


def test_check_type_enforces_domain_and_names_it():
    annotation = Annotated[float, Range(ge=0, le=1)]
    assert check_type(1, annotation, "x") == 1.0
    with pytest.raises(ConfigError, match=r"dropout must be float in \[0, 1\], got 2"):
        check_type(2, annotation, "dropout")
    with pytest.raises(ConfigError, match="must be float"):
        check_type("a", annotation, "dropout")
    optional = Annotated[int, Range(ge=1)] | None
    assert check_type(None, optional, "k") is None
    with pytest.raises(ConfigError, match=r"int in \[1, inf\) or null, got 0"):
        check_type(0, optional, "k")
    assert describe_annotation(Annotated[float, Range(gt=0)]) == "float in (0, inf)"


def test_integers_past_floats_range_are_domain_errors_not_overflows():
    huge = 10**400  # `--seed 1000...0` or `--set batch_size=1000...0`
    assert Range(ge=1).contains(huge) and not Range(ge=1, le=64).contains(huge)
    with pytest.raises(ConfigError, match=r"layers must be int in \[1, 64\]"):
        check_type(huge, Annotated[int, Range(ge=1, le=64)], "layers")
    with pytest.raises(ConfigError, match="learning_rate must be float"):
        check_type(huge, Annotated[float, Range(gt=0)], "learning_rate")


def test_overrides_read_yaml_1_2_floats_and_refuse_repeated_keys():
    from rearm.experiments.config import parse_override, resolve_config

    assert parse_override("learning_rate=5e-5") == ("learning_rate", 5e-5)
    config = resolve_config(model="mf", overrides=["learning_rate=1E-3", "weight_decay=2e-4"])
    assert config.training["learning_rate"] == 1e-3 and config.training["weight_decay"] == 2e-4
    with pytest.raises(ConfigError, match="key 'image' appears twice"):
        parse_override("item_modality_weights={image: 0.2, image: 0.8}")
    with pytest.raises(ConfigError, match=r"patience must be int in \[1, inf\), got 0"):
        resolve_config(model="mf", overrides=["patience=0"])
