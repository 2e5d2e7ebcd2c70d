"""What models compute: the shared contract, layers, REARM and the baselines.

The model classes (and torch) are imported on first use, so that `MODEL_NAMES` costs nothing:
`rearm --help` and `rearm data ...` start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rearm.errors import ConfigError

if TYPE_CHECKING:
    from rearm.models.base import Recommender
    from rearm.models.bm3 import BM3
    from rearm.models.dragon import DRAGON
    from rearm.models.freedom import FREEDOM
    from rearm.models.lgmrec import LGMRec
    from rearm.models.lightgcn import LightGCN
    from rearm.models.mf import MF
    from rearm.models.mgcn import MGCN
    from rearm.models.rearm import REARM
    from rearm.models.vbpr import VBPR

# name -> (module, class), in the order `rearm train --help` lists them
_REGISTRY = {
    "rearm": ("rearm.models.rearm", "REARM"),
    "mf": ("rearm.models.mf", "MF"),
    "lightgcn": ("rearm.models.lightgcn", "LightGCN"),
    "vbpr": ("rearm.models.vbpr", "VBPR"),
    "freedom": ("rearm.models.freedom", "FREEDOM"),
    "bm3": ("rearm.models.bm3", "BM3"),
    "dragon": ("rearm.models.dragon", "DRAGON"),
    "mgcn": ("rearm.models.mgcn", "MGCN"),
    "lgmrec": ("rearm.models.lgmrec", "LGMRec"),
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)
_CLASSES = {cls: module for module, cls in _REGISTRY.values()}
_CLASSES["Recommender"] = "rearm.models.base"


def get_model(name: str) -> type[Recommender]:
    if name not in _REGISTRY:
        raise ConfigError(
            f"--model: unknown model {name!r} (known: {', '.join(sorted(_REGISTRY))})"
        )
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def __getattr__(name: str) -> Any:
    # MODELS {name: class} and the classes themselves, imported when first asked for
    if name == "MODELS":
        return {model: get_model(model) for model in MODEL_NAMES}
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BM3",
    "DRAGON",
    "FREEDOM",
    "MF",
    "MGCN",
    "MODELS",
    "MODEL_NAMES",
    "REARM",
    "VBPR",
    "LGMRec",
    "LightGCN",
    "Recommender",
    "get_model",
]
