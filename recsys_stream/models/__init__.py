"""Online models. ``MODELS`` maps a ``--model`` name to its class and parameter type."""

from __future__ import annotations

from .base import Model, ModelDivergedError, Params, Prepared
from .ftrl import FTRLModel, FTRLParams
from .hybrid import HybridModel, HybridParams
from .implicit import ImplicitModel, ImplicitParams
from .itemknn import ItemKNNModel, ItemKNNParams
from .mf import MFModel, MFParams
from .pop import PopModel, PopParams

MODELS: dict[str, tuple[type[Model], type[Params]]] = {
    "mf": (MFModel, MFParams),
    "implicit": (ImplicitModel, ImplicitParams),
    "itemknn": (ItemKNNModel, ItemKNNParams),
    "ftrl": (FTRLModel, FTRLParams),
    "pop": (PopModel, PopParams),
    "hybrid": (HybridModel, HybridParams),
}


def model_params(name: str, **overrides) -> Params:
    """Default parameters of model ``name`` with ``overrides`` applied (validated)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name][1]().replace(**overrides)


__all__ = ["MODELS", "Model", "ModelDivergedError", "Params", "Prepared", "model_params"]
