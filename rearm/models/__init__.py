"""What models compute: the shared contract, layers, REARM and the baselines."""

from __future__ import annotations

from rearm.errors import ConfigError
from rearm.models.base import Recommender
from rearm.models.freedom import FREEDOM
from rearm.models.lightgcn import LightGCN
from rearm.models.mf import MF
from rearm.models.rearm import REARM
from rearm.models.vbpr import VBPR

MODELS: dict[str, type[Recommender]] = {
    "rearm": REARM,
    "mf": MF,
    "lightgcn": LightGCN,
    "vbpr": VBPR,
    "freedom": FREEDOM,
}


def get_model(name: str) -> type[Recommender]:
    if name not in MODELS:
        raise ConfigError(f"--model: unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]


__all__ = ["FREEDOM", "MF", "MODELS", "REARM", "VBPR", "LightGCN", "Recommender", "get_model"]
