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
