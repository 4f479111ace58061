"""``SparsityConfig``: the base of every method config, its validation helpers, JSON round trip and plan.

Every config is a transformers ``QuantizationConfigMixin`` with ``quant_method="hf_sparse"``, so it can be
passed as ``quantization_config=`` to any ``from_pretrained`` and is written into ``config.json``.
``to_dict()`` carries ``"method"``; ``SparsityConfig.from_dict`` / ``from_json`` return the right subclass
(a list means several methods, returned as a :class:`ComposedSparsityConfig`).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable
from typing import Any, ClassVar

from transformers.utils.quantization_config import QuantizationConfigMixin

from .registry import CONFIG_CLASSES

QUANT_METHOD = "hf_sparse"
#: version of the plan / config layout written by this release; bumped on incompatible changes
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------- validation
def check_type(field: str, value: Any, kinds: type | tuple[type, ...], allowed: str) -> None:
    """``TypeError`` naming the field, the value and what is allowed, unless ``value`` is of ``kinds``.

    ``bool`` is never accepted where ``int``/``float`` is asked for.
    """
    kinds_t = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds_t) or (isinstance(value, bool) and bool not in kinds_t):
        raise TypeError(f"{field} must be {allowed}, got {value!r} ({type(value).__name__})")


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{field} must be one of {choices}, got {value!r}")


def check_range(field: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """``ValueError`` unless ``low <(=) value <(=) high``; the message spells out the interval."""
    ok = True
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value < high if high_open else value <= high
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{field} must be in {left}{lo}, {hi}{right}, got {value!r}")


def check_module_patterns(field: str, value: Any) -> list[str] | None:
    """Normalize ``target_modules`` / ``modules_to_not_convert``: None, one regex, or a list of names/regexes."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{field} must be None, a string or a list of strings (module names or regexes), "
                        f"got {value!r}")
    if len(value) == 0:
        raise ValueError(f"{field} must not be an empty list; use None for the default selection")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{field} entry {pattern!r} is not a valid regular expression: {err}") from None
    return list(value)


def pattern_matches(pattern: str, name: str) -> bool:
    """PEFT-style matching: the exact name, a dotted suffix of it, or a full regex match."""
    return name == pattern or name.endswith("." + pattern) or re.fullmatch(pattern, name) is not None


# ----------------------------------------------------------------------------------------------- configs
class SparsityConfig(QuantizationConfigMixin):
    """Base of the method configs.

    Args:
        target_modules: None for every eligible layer (Linear, GPT-2 ``Conv1D``, ConvNd) except embeddings,
            output heads and classifier heads; else module names (exact or dotted suffix) or regexes.
        modules_to_not_convert: names / regexes excluded from the selection.
        plan: filled by conversion: module name -> exact spec of what it became. Leave empty.
        format_version: layout version of ``plan``; checked on load.
    """

    method: ClassVar[str] = ""
    #: names of the method-specific fields, in ``to_dict`` order (subclasses extend it)
    fields: ClassVar[tuple[str, ...]] = ()
    #: True for methods whose structure is decided during training (Cuttlefish): converting may leave the
    #: model unchanged and a saved model may carry an empty plan (it reloads as the dense model + schedule)
    structure_set_in_training: ClassVar[bool] = False

    def __init__(self, target_modules: list[str] | str | None = None,
                 modules_to_not_convert: list[str] | str | None = None,
                 plan: dict[str, dict[str, Any]] | None = None, format_version: int = FORMAT_VERSION) -> None:
        self.quant_method = QUANT_METHOD
        self.target_modules = check_module_patterns("target_modules", target_modules)
        self.modules_to_not_convert = check_module_patterns("modules_to_not_convert", modules_to_not_convert)
        check_type("format_version", format_version, int, "an integer")
        if format_version > FORMAT_VERSION or format_version < 1:
            raise ValueError(f"format_version {format_version} is not supported by this hf-sparse "
                             f"(supports 1..{FORMAT_VERSION}); upgrade hf-sparse to load this model")
        self.format_version = format_version
        if plan is None:
            plan = {}
        if not isinstance(plan, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in plan.items()):
            raise TypeError(f"plan must map module names to spec dicts, got {type(plan).__name__}")
        self.plan = copy.deepcopy(plan)

    # -- serialization -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"quant_method": QUANT_METHOD, "method": self.method,
                               "format_version": self.format_version}
        for name in self.fields + ("target_modules", "modules_to_not_convert"):
            out[name] = copy.deepcopy(getattr(self, name))
        out["plan"] = copy.deepcopy(self.plan)
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any] | list, return_unused_kwargs: bool = False, **kwargs):
        """Build the config a dict (or a list of dicts, for several methods) describes.

        Called on ``SparsityConfig`` it dispatches on ``"method"``; called on a subclass it checks that
        the method matches. ``kwargs`` update matching attributes (transformers' convention).
        """
        if isinstance(config_dict, SparsityConfig):
            config = copy.deepcopy(config_dict)
        elif isinstance(config_dict, list):
            config = ComposedSparsityConfig([SparsityConfig.from_dict(d) for d in config_dict])
        elif isinstance(config_dict, dict):
            config = _config_from_dict(cls, config_dict)
        else:
            raise TypeError(f"a sparsity config must be a dict or a list of dicts, got {type(config_dict).__name__}")
        unused = config.update(**kwargs) if kwargs else {}
        return (config, unused) if return_unused_kwargs else config

    @classmethod
    def from_json(cls, path_or_string: str | os.PathLike) -> SparsityConfig:
        """Config from a JSON file path or a JSON string (an object, or a list for several methods)."""
        text = str(path_or_string)
        if os.path.isfile(text):
            with open(text, encoding="utf-8") as fh:
                text = fh.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"sparsity config is neither an existing file nor valid JSON ({err}): "
                             f"{text[:200]!r}") from None
        return cls.from_dict(data)

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        with open(json_file_path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json_string())

    @property
    def needs_calibration(self) -> bool:
        """True when ``sparsify`` needs ``calibration_data`` for this config."""
        return False

    # -- plan ---------------------------------------------------------------------------------------
    @property
    def configs(self) -> list[SparsityConfig]:
        """The method configs inside this one (itself, for a single method)."""
        return [self]

    def without_plan(self) -> SparsityConfig:
        """A copy with an empty plan: the settings alone, ready to convert another model."""
        clone = copy.deepcopy(self)
        clone.plan = {}
        return clone

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SparsityConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.fields + ("target_modules",))
        return f"{type(self).__name__}({args}, plan=<{len(self.plan)} modules>)"


def _config_from_dict(cls: type[SparsityConfig], data: dict[str, Any]) -> SparsityConfig:
    data = dict(data)
    quant_method = data.pop("quant_method", QUANT_METHOD)
    if quant_method != QUANT_METHOD:
        raise ValueError(f"quant_method must be {QUANT_METHOD!r} for an hf-sparse config, got {quant_method!r}")
    method = data.pop("method", cls.method or None)
    if method is None:
        raise ValueError(f"sparsity config dict lacks 'method'; one of {sorted(CONFIG_CLASSES) + ['composed']}")
    if method == ComposedSparsityConfig.method:
        return ComposedSparsityConfig([SparsityConfig.from_dict(d) for d in data.get("configs", [])],
                                      format_version=data.get("format_version", FORMAT_VERSION))
    if method not in CONFIG_CLASSES:
        raise ValueError(f"unknown sparsity method {method!r}; known methods: {sorted(CONFIG_CLASSES)}")
    target = CONFIG_CLASSES[method]
    if cls not in (SparsityConfig, target):
        raise ValueError(f"{cls.__name__}.from_dict got a config for method {method!r}")
    allowed = set(target.fields) | {"target_modules", "modules_to_not_convert", "plan", "format_version"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for method {method!r}; allowed: {sorted(allowed)}")
    return target(**data)


class ComposedSparsityConfig(SparsityConfig):
    """Several method configs applied together, each to its own (disjoint) targets.

    ``SparsityConfig.from_json('[{...}, {...}]')`` and ``sparsify(model, [cfg_a, cfg_b])`` build one.
    """

    method: ClassVar[str] = "composed"

    def __init__(self, configs: list[SparsityConfig | dict], format_version: int = FORMAT_VERSION) -> None:
        super().__init__(format_version=format_version)
        if not isinstance(configs, (list, tuple)) or len(configs) == 0:
            raise ValueError(f"configs must be a non-empty list of sparsity configs, got {configs!r}")
        flat: list[SparsityConfig] = []
        for item in configs:
            if isinstance(item, dict):
                item = SparsityConfig.from_dict(item)
            if not isinstance(item, SparsityConfig):
                raise TypeError(f"configs entries must be SparsityConfig objects or dicts, got {type(item).__name__}")
            flat.extend(item.configs)
        self._configs = flat

    @property
    def configs(self) -> list[SparsityConfig]:
        return self._configs

    @property
    def plan(self) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        merged: dict[str, dict[str, Any]] = {}
        for cfg in self._configs:
            merged.update(cfg.plan)
        return merged

    @plan.setter
    def plan(self, value: dict[str, dict[str, Any]]) -> None:
        if value:
            raise ValueError("a composed config's plan lives in its method configs; set theirs")

    @property
    def needs_calibration(self) -> bool:
        return any(cfg.needs_calibration for cfg in self._configs)

    def without_plan(self) -> ComposedSparsityConfig:
        return ComposedSparsityConfig([c.without_plan() for c in self._configs], self.format_version)

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, "method": self.method, "format_version": self.format_version,
                "configs": [c.to_dict() for c in self._configs]}

    def __repr__(self) -> str:
        return f"ComposedSparsityConfig({self._configs!r})"


def as_sparsity_config(config: SparsityConfig | dict | list | str | os.PathLike) -> SparsityConfig:
    """Accept a config object, a dict, a list of either (several methods), a JSON string or a JSON path."""
    if isinstance(config, SparsityConfig):
        return config
    if isinstance(config, (dict, list)):
        if isinstance(config, list) and all(isinstance(c, SparsityConfig) for c in config):
            return ComposedSparsityConfig(list(config))
        return SparsityConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return SparsityConfig.from_json(config)
    raise TypeError(f"sparsity config must be a SparsityConfig, dict, list, JSON string or path, "
                    f"got {type(config).__name__}")
