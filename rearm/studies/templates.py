"""The paper's studies as spec templates (`rearm study templates`, `rearm study template NAME`).

Each template is a spec mapping without preset or seeds, and without data except `modalities`,
whose rows need a data set with its modalities (a synthetic recipe): `rearm study run TEMPLATE
--data D --preset P --seeds N` fills them in (the synthetic default data set and 3 seeds otherwise).
"""

from __future__ import annotations

import yaml

from rearm.errors import ConfigError

ABLATIONS = (
    "no_homographs",
    "no_meta",
    "no_orthogonal",
    "no_user_graph",
    "no_item_graph",
    "cooccurrence_only",
    "semantic_only",
    "no_attention",
    "no_contrastive",
)
_WEIGHTS = [round(0.1 * step, 1) for step in range(10)]
# One synthetic world with three informative modalities in distinct styles and a fourth of pure
# noise; the rows use its first 1, 2, 3 and 4 tables, so every row sees the same interactions.
MODALITIES_DATA = "synthetic:modalities=image:256,text:64,audio:96,noise:128:noise"
_MODALITY_ORDER = ("image", "text", "audio", "noise")
_K_VALUES = [5, 10, 20, 40, 80]
ROBUSTNESS_FRACTIONS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def _compare_models() -> list[str]:
    from rearm.models import MODEL_NAMES

    return ["rearm"] + sorted(name for name in MODEL_NAMES if name != "rearm")


def _templates() -> dict[str, dict]:
    return {
        "ablation": {
            "description": "REARM without each component (the paper's ablation table first: "
            "no_homographs, no_meta, no_orthogonal; then the other switches)",
            "model": "rearm",
            "variants": {"full": {}, **{name: {name: True} for name in ABLATIONS}},
            "reference": "full",
        },
        "rank": {
            "description": "sensitivity to the meta-network's matrix rank, 1..10",
            "model": "rearm",
            "axes": {"rank": list(range(1, 11))},
        },
        "cooccurrence": {
            "description": "sensitivity to the co-occurrence weight of the item homograph, "
            "0.0..0.9, and of the user homograph (a second axis group)",
            "model": "rearm",
            "axes": [
                {"item_cooccurrence_weight": _WEIGHTS},
                {"user_cooccurrence_weight": _WEIGHTS},
            ],
        },
        "sparsity": {
            "description": "graph sparsity: user_knn_k and item_knn_k over 5..80 (each its own "
            "axis group; the paper leaves k unreported)",
            "model": "rearm",
            "axes": [{"user_knn_k": _K_VALUES}, {"item_knn_k": _K_VALUES}],
        },
        "layers": {
            "description": "number of propagation layers, 1..6",
            "model": "rearm",
            "axes": {"num_layers": list(range(1, 7))},
        },
        "compare": {
            "description": "every registered model at its published settings (a preset applies "
            "to the models that define it)",
            "models": _compare_models(),
            "reference": "rearm",
        },
        "robustness": {
            "description": "misaligned modalities (open question 3): the image modality shuffled "
            "among a fraction P of items, P = 0..1, for REARM, its no_meta and no_contrastive "
            "ablations, FREEDOM, VBPR and LightGCN (no features: the floor)",
            "corruption": {
                "modality": "image",
                "mode": "shuffle",
                "fractions": ROBUSTNESS_FRACTIONS,
                "seed": 0,
            },
            "variants": {
                "full": {},
                "no_meta": {"no_meta": True},
                "no_contrastive": {"no_contrastive": True},
                "freedom": {"model": "freedom"},
                "vbpr": {"model": "vbpr"},
                "lightgcn": {"model": "lightgcn"},
            },
        },
        "modalities": {
            "description": "REARM and FREEDOM with 1, 2, 3 and 4 modalities of one synthetic "
            "world (image-, text-, audio-like, then a pure-noise table): accuracy, seconds per "
            "epoch, peak memory and parameters per modality count; does a useless modality "
            "hurt (reference: rearm with the three informative ones)",
            "models": ["rearm", "freedom"],
            "data": MODALITIES_DATA,
            "variants": {
                "+".join(_MODALITY_ORDER[:count]): {"modalities": list(_MODALITY_ORDER[:count])}
                for count in range(1, len(_MODALITY_ORDER) + 1)
            },
            "reference": "rearm " + "+".join(_MODALITY_ORDER[:3]),
        },
        "protocols": {
            "description": "every model under the standard and the reference protocol side by "
            "side: how much the published code's negative-sampling leak and test masking move "
            "each model's numbers",
            "models": _compare_models(),
            "axes": {"protocol": ["standard", "reference"]},
        },
    }


TEMPLATE_NAMES = tuple(_templates())


def get_template(name: str) -> dict:
    """The spec mapping of template `name` (a fresh copy); ConfigError naming the known ones."""
    templates = _templates()
    if name not in templates:
        raise ConfigError(
            f"unknown study template {name!r} (templates: {', '.join(templates)}; "
            "or give a spec file path)"
        )
    return {"name": name, **templates[name]}


def template_yaml(name: str) -> str:
    """The template as an editable spec file (data, preset and seeds spelled out)."""
    spec = get_template(name)
    spec = {"name": spec.pop("name"), "description": spec.pop("description")} | {
        "data": None,
        "preset": None,
        "protocol": "standard",
        "seeds": 3,
        "training": {},
        **spec,
    }
    header = (
        f"# rearm study spec: {name}\n"
        "# data: null is the synthetic default; seeds: a count (from 2025) or a list\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False)


def describe_templates() -> list[tuple[str, str]]:
    return [(name, spec["description"]) for name, spec in _templates().items()]
