"""Registries that tie method names to their configs, converters and layer classes.

Each method package registers itself on import (``hf_sparse/__init__.py`` imports them all), so the
core (``inject.py``, ``quantizer.py``, ``summary.py``) never names a method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from .config import SparsityConfig
    from .layers import SparseLayer
    from .training.schedule import TrainingSchedule

#: method name -> config class (``"greenformer"`` -> ``GreenformerConfig``)
CONFIG_CLASSES: dict[str, type[SparsityConfig]] = {}
#: method name -> converter ``(model, names, config, calibration_batches) -> {name: SparseLayer}``.
#: It builds the new layers for the selected modules (leaving out those that stay dense) without touching
#: the model; ``inject.sparsify`` swaps them in. ``calibration_batches`` is None unless the config
#: ``needs_calibration``.
Converter = Callable[["nn.Module", list[str], "SparsityConfig", "list[dict] | None"], "dict[str, SparseLayer]"]
CONVERTERS: dict[str, Converter] = {}
#: method name -> ``(module, config) -> bool``: can this method convert this module at all
ELIGIBILITY: dict[str, Callable[[nn.Module, SparsityConfig], bool]] = {}
#: method name -> ``(model, config) -> None``: model-level changes after the layers are in place (also on
#: reload), e.g. switching the attention implementation. Must not fail: converters validate beforehand.
FINALIZERS: dict[str, Callable[[nn.Module, SparsityConfig], None]] = {}
#: method name -> ``(model, config) -> None``: reverts its finalizer's model-level change (``densify``)
UNDO_FINALIZERS: dict[str, Callable[[nn.Module, SparsityConfig], None]] = {}
#: layer class name as written in a plan -> class
LAYER_CLASSES: dict[str, type[SparseLayer]] = {}
#: method name -> ``TrainingSchedule`` subclass run by ``SparseTrainer`` for configs of that method
SCHEDULES: dict[str, type[TrainingSchedule]] = {}


def register_config(method: str):
    """Class decorator: register a ``SparsityConfig`` subclass under ``method``."""

    def wrap(cls):
        if method in CONFIG_CLASSES and CONFIG_CLASSES[method] is not cls:
            raise ValueError(f"sparsity method {method!r} is already registered by {CONFIG_CLASSES[method]}")
        cls.method = method
        CONFIG_CLASSES[method] = cls
        return cls

    return wrap


def register_converter(method: str, is_eligible: Callable[[nn.Module, SparsityConfig], bool]):
    """Function decorator: register the converter of ``method`` (see :data:`CONVERTERS`), and the
    predicate telling which modules it can convert."""

    def wrap(fn):
        CONVERTERS[method] = fn
        ELIGIBILITY[method] = is_eligible
        return fn

    return wrap


def register_layer(cls):
    """Class decorator: make a ``SparseLayer`` rebuildable from the ``class`` field of a plan entry."""
    LAYER_CLASSES[cls.__name__] = cls
    return cls


def register_finalizer(method: str, undo: Callable[[nn.Module, SparsityConfig], None] | None = None):
    """Function decorator: register ``method``'s model-level step run after its layers are swapped in, and
    the function that reverts it when the model is made dense again."""

    def wrap(fn):
        FINALIZERS[method] = fn
        if undo is not None:
            UNDO_FINALIZERS[method] = undo
        return fn

    return wrap


def register_schedule(method: str):
    """Class decorator: run this ``TrainingSchedule`` subclass during training for configs of ``method``."""

    def wrap(cls):
        cls.method = method
        SCHEDULES[method] = cls
        return cls

    return wrap
