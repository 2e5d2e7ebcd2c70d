"""What models compute: the shared contract, layers, REARM and the baselines."""

from __future__ import annotations

from rearm.errors import ConfigError
from rearm.models.base import Recommender
from rearm.models.rearm import REARM

MODELS: dict[str, type[Recommender]] = {"rearm": REARM}


def get_model(name: str) -> type[Recommender]:
    if name not in MODELS:
        raise ConfigError(f"--model: unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]


__all__ = ["MODELS", "REARM", "Recommender", "get_model"]
