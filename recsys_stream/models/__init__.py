"""Online models. ``MODELS`` maps a ``--model`` name to its class (``Model.params_type``
is its parameter type); every suite that checks "every model" iterates over it."""

from __future__ import annotations

from .base import Model, ModelDivergedError, Params
from .ftrl import FTRLModel, FTRLParams
from .hybrid import HybridModel, HybridParams
from .implicit import ImplicitModel, ImplicitParams
from .itemknn import ItemKNNModel, ItemKNNParams
from .mf import MFModel, MFParams
from .pop import PopModel, PopParams

MODELS: dict[str, type[Model]] = {cls.name: cls for cls in (MFModel, ImplicitModel, ItemKNNModel, FTRLModel,
                                                            PopModel, HybridModel)}
DEFAULT_MODEL = "itemknn"


def model_params(name: str, **overrides) -> Params:
    """Default parameters of model ``name`` with ``overrides`` applied (validated):

    >>> model_params("mf", dim=8).dim
    8
    >>> model_params("mf", lr=0)
    Traceback (most recent call last):
    ValueError: parameter 'lr' must be > 0, got 0.0
    >>> model_params("pop", dim=8)
    Traceback (most recent call last):
    ValueError: 'dim' does not apply to this model; its parameters: none
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name].params_type().replace(**overrides)


__all__ = ["DEFAULT_MODEL", "MODELS", "Model", "ModelDivergedError", "Params", "model_params", "FTRLParams",
           "HybridParams", "ImplicitParams", "ItemKNNParams", "MFParams", "PopParams"]
