"""The contract every model implements, so that one trainer, one evaluator and one run format
serve REARM and all baselines alike.

A model is a torch module with:
  * `embed() -> (user_repr [U, D], item_repr [I, D])`: final representations; the score of (u, i)
    is always their inner product, so a saved model needs only these two tables to recommend;
  * `loss(users, pos_items, neg_items) -> {name: scalar}`: named, already weighted loss terms of a
    batch; the trainer minimises their sum;
  * `score(users) -> [B, I]`: raw scores (masking belongs to evaluation, never to the model);
  * `on_epoch_start(epoch, generator)`: optional per-epoch work (e.g. FREEDOM's edge pruning);
  * `embedding_blocks() -> [(name, width), ...] | None`: optional; the named column blocks of
    `embed()`'s representations, in order, whose per-block inner products add up to the score
    exactly (REARM: one block per modality plus the meta block); None when there are none;
  * `from_dataset(dataset, *, graph_cache, seed, progress, **hyperparameters)`: build the graphs it
    needs from a Dataset (pure graph builders) and construct the module. Its keyword-only
    parameters with type annotations ARE the model's configuration: they are validated by
    `hyperparameters()` and `validate_hyperparameters()`, unknown keys and wrong types fail.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn

from rearm.errors import ConfigError

# Keyword arguments of from_dataset that are plumbing, not hyperparameters.
_PLUMBING = {"dataset", "graph_cache", "seed", "progress"}


class Recommender(nn.Module):
    """Base class of every model (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    # training keys this model defaults to (e.g. its paper's learning rate); presets override
    training_defaults: ClassVar[dict[str, Any]] = {}
    # True when loss() can run with fixed shapes and without host synchronisation once
    # `static_shapes` is set (the trainer then captures the training step in a CUDA graph)
    capturable: ClassVar[bool] = False
    static_shapes: bool = False
    # True for models that use no item features (MF, LightGCN): no cold-item path at all
    feature_free: ClassVar[bool] = False

    def embed(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def score(self, users: Tensor, embeddings: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """users: LongTensor [B] -> scores [B, num_items]."""
        user_repr, item_repr = embeddings if embeddings is not None else self.embed()
        return user_repr[users] @ item_repr.T

    def cold_item_representation(
        self,
        features: Mapping[str, Any],
        known_features: Mapping[str, Any],
        hyperparameters: Mapping[str, Any],
    ) -> Tensor:
        """Representations [n, D] (the columns of embed()'s item table) of n new items that have
        features ({modality: [n, D_m]}) but no interactions and no ID embedding, through the
        model's feature path, from the trained weights; `known_features` are the training data's
        item features ({modality: [I, D_m]}) and `hyperparameters` the run's resolved ones.
        Models without a feature path raise ColdStartError."""
        from rearm.errors import ColdStartError

        if self.feature_free:
            raise ColdStartError(
                f"{self.name} has no item features: it cannot represent an item without "
                "interactions (cold items need a model with a feature path, e.g. rearm, vbpr "
                "or freedom)"
            )
        raise ColdStartError(
            f"cold items are not implemented for {self.name} (models that support them: "
            "rearm, vbpr, freedom)"
        )

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Per-epoch hook; most models need none."""

    def embedding_blocks(self) -> list[tuple[str, int]] | None:
        """Named column blocks of `embed()`'s user and item representations, in column order:
        [(name, width), ...] with widths summing to the representation width, so that the score
        splits exactly into per-block inner products. None (the default) for models whose
        representation has no such blocks."""
        return None

    def notes(self) -> list[str]:
        """Remarks a run records in results.json (e.g. a reproduced quirk in effect)."""
        return []

    def gradient_checked_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters whose gradients the divergence guard checks after each step
        (rearm.training.guards). All of them by default; a model may leave out a parameter whose
        gradient is finite whenever the checked ones are, to save a pass over a large gradient."""
        return [p for p in self.parameters() if p.requires_grad]

    @classmethod
    def from_dataset(cls, dataset: Any, **kwargs: Any) -> Recommender:
        raise NotImplementedError

    @classmethod
    def hyperparameters(cls) -> dict[str, tuple[Any, Any]]:
        """{name: (annotation, default)} of the keyword-only arguments of from_dataset."""
        hints = typing.get_type_hints(cls.from_dataset, include_extras=True)
        out = {}
        for name, parameter in inspect.signature(cls.from_dataset).parameters.items():
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or name in _PLUMBING:
                continue
            out[name] = (hints.get(name, Any), parameter.default)
        return out

    @classmethod
    def validate_hyperparameters(cls, values: Mapping[str, Any], where: str = "config") -> dict:
        """Check names and types against hyperparameters(); return a complete dict (defaults
        filled in). Integers are accepted where floats are expected; nothing else is coerced."""
        known = cls.hyperparameters()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"{where}: unknown hyperparameter {unknown[0]!r} for model {cls.name!r} "
                f"(known: {', '.join(sorted(known))})"
            )
        resolved = {}
        for name, (annotation, default) in known.items():
            value = values.get(name, default)
            resolved[name] = check_type(value, annotation, f"{where}: {name}")
        cls.validate(resolved, where)
        return resolved

    @classmethod
    def validate(cls, hyperparameters: Mapping[str, Any], where: str = "config") -> None:
        """Relations between hyperparameters that one key's domain cannot say (e.g. weights
        summing to 1); raise ConfigError naming the keys. Called with every key resolved."""


@dataclass(frozen=True)
class Range:
    """A numeric domain, declared next to a default as `Annotated[float, Range(gt=0)]`.

    Bounds: `ge` / `gt` below, `le` / `lt` above (None: unbounded). NaN and infinities are
    outside every Range."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True  # the type check reports wrong types
        if isinstance(value, float) and not math.isfinite(value):
            return False  # (an int of any size compares with the bounds exactly)
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def describe(self) -> str:
        low = (
            f"[{_number(self.ge)}"
            if self.ge is not None
            else f"({_number(self.gt)}"
            if self.gt is not None
            else "(-inf"
        )
        high = (
            f"{_number(self.le)}]"
            if self.le is not None
            else f"{_number(self.lt)})"
            if self.lt is not None
            else "inf)"
        )
        return f"in {low}, {high}"


def _number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def meaning_of(annotation: Any) -> str:
    """The text of an annotation's meaning, declared as a plain string beside its domain:
    `Annotated[int, Range(ge=1), "transformer layers"]`; "" when none is declared."""
    if typing.get_origin(annotation) is Annotated:
        return " ".join(
            extra for extra in typing.get_args(annotation)[1:] if isinstance(extra, str)
        )
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " ".join(filter(None, (meaning_of(arg) for arg in typing.get_args(annotation))))
    return ""


def domain_of(annotation: Any) -> tuple[Any, tuple[Range, ...]]:
    """(base type, domains) of an annotation; plain annotations have no domains."""
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        return base, tuple(extra for extra in extras if isinstance(extra, Range))
    return annotation, ()


def describe_annotation(annotation: Any) -> str:
    """'float in (0, inf)', 'one of 'a', 'b'', ... for help texts and errors."""
    base, domains = domain_of(annotation)
    return " ".join([_describe(base)] + [domain.describe() for domain in domains])


def check_weights(weights: Mapping[str, float] | None, label: str) -> None:
    """A {name: weight} mix: weights in [0, 1] summing to 1 (within 1e-6); None passes."""
    if weights is None:
        return
    if not weights:
        raise ConfigError(f"{label} must name at least one modality, got {{}}")
    total = sum(weights.values())
    if any(not 0.0 <= w <= 1.0 for w in weights.values()) or abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"{label} must be weights in [0, 1] summing to 1, got {dict(weights)!r} (sum {total:g})"
        )


def check_type(value: Any, annotation: Any, label: str) -> Any:
    """Validate `value` against a (simple) type annotation and its declared domain; return it,
    ints widened to float."""
    ok, value = _matches(value, annotation)
    if not ok:
        raise ConfigError(f"{label} must be {describe_annotation(annotation)}, got {value!r}")
    return value


def _matches(value: Any, annotation: Any) -> tuple[bool, Any]:
    if annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        base, domains = domain_of(annotation)
        ok, value = _matches(value, base)
        return ok and all(domain.contains(value) for domain in domains), value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _matches(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return value in args, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int | float):
            try:
                return True, float(value)
            except OverflowError:  # an int past float's range (10**400)
                return False, value
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False, value
        key_type, value_type = args if args else (Any, Any)
        converted = {}
        for key, item in value.items():
            ok_key, key = _matches(key, key_type)
            ok_value, item = _matches(item, value_type)
            if not (ok_key and ok_value):
                return False, value
            converted[key] = item
        return True, converted
    if origin in (tuple, list) or annotation in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        item_type = args[0] if args else Any
        converted = []
        for item in value:
            ok, item = _matches(item, item_type)
            if not ok:
                return False, value
            converted.append(item)
        return True, tuple(converted) if origin is tuple else converted
    return isinstance(value, annotation), value


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_annotation(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin in (dict, Mapping) and typing.get_args(annotation):
        key, value = typing.get_args(annotation)
        return f"mapping of {describe_annotation(key)} to {describe_annotation(value)}"
    return getattr(annotation, "__name__", str(annotation))


ProgressFn = Callable[[str], None]
