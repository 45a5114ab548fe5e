"""The search space: parsed from YAML once, validated all at once, mapped to pymoo variables.

File layout (sections ``training``, ``lora``, ``data``, ``model``)::

    training:
      learning_rate: {type: log_uniform, min: 1e-6, max: 1e-3}
      batch_size: {type: categorical, values: [4, 8, 16]}
      num_train_epochs: {type: int, min: 1, max: 3}
    lora:
      r: {type: categorical, values: [8, 16, 32]}
      target_modules: {type: categorical, values: [[q_proj, v_proj], attention]}
      lr_scheduler_type: {type: categorical, values: [linear, cosine, constant], ordered: false}
    data:
      max_seq_length: 512          # a plain value fixes the parameter

Parameters left out keep the defaults of :class:`moopt.config.TrialConfig`.
Variables are encoded for pymoo as: log_uniform -> Real over log(value) (on an integer parameter such as
lora.r or batch_size, rounded to the nearest integer: integers on a log scale, the range's two ends with
their whole rounding interval, as every other integer); uniform -> Real;
int -> Integer over step indices; categorical -> Choice over option indices (so lists such as
target_modules are hashable and duplicate elimination works).

A categorical is ordered (its options lie on a scale, as batch sizes do) or not (scheduler names, module
sets): ``ordered: true|false``, by default ordered when its values are numbers listed in ascending or
descending order. The engine's surrogate reads an ordered one's option index as a position on that scale
and an unordered one's options in the order of the results they gave (``Engine._target_ordered``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moopt.config import SECTIONS, TrialConfig, coerce, normalize_targets
from moopt.errors import ConfigError
from moopt.yamlio import read_yaml_mapping

TYPES = ("log_uniform", "uniform", "int", "categorical")
PARAM_KEYS = {"type", "min", "max", "values", "step", "ordered"}


@dataclass(frozen=True)
class Param:
    name: str  # "section.field", e.g. "training.learning_rate"
    type: str  # log_uniform | uniform | int | categorical
    low: float | None = None
    high: float | None = None
    step: int = 1
    values: tuple = ()
    ordered: bool | None = None  # categorical only; None: inferred (see is_ordered)
    integer: bool = False  # log_uniform on an integer parameter: decodes to the nearest integer

    @property
    def is_ordered(self) -> bool:
        """Whether a categorical's options lie on a scale in the order listed: as the file says, else when
        they are numbers listed in ascending or descending order ([4, 8, 16] is; [linear, cosine] is not)."""
        if self.ordered is not None:
            return self.ordered
        v = self.values
        return all(_is_number(x) for x in v) and (list(v) == sorted(v) or list(v) == sorted(v, reverse=True))

    @property
    def short(self) -> str:
        return self.name.split(".", 1)[1]

    # -- encoding to / from pymoo's variable values --------------------------------------------
    def decode(self, x: Any) -> Any:
        if self.type == "log_uniform" and self.integer:
            return int(self._clip(round(math.exp(float(x)))))
        if self.type == "log_uniform":  # 6 significant digits: 2e-4, not 0.00019999999999999985
            return self._clip(float(f"{math.exp(float(x)):.6g}"))
        if self.type == "uniform":
            return self._clip(float(f"{float(x):.6g}"))
        if self.type == "int":
            return int(self.low + self.step * int(round(float(x))))
        return self.values[int(x)]

    def _clip(self, v: float) -> float:
        """Rounding to 6 digits may step just past a bound (min 1.2345649e-6 -> 1.23456e-6)."""
        return min(max(v, self.low), self.high)

    def encode(self, value: Any) -> Any:
        """Nearest encoded point to ``value`` (used to move the default trial into the space). A value
        outside the range, 0 on a log scale included (weight_decay's default), moves to the nearer bound."""
        if self.type == "log_uniform":
            return math.log(self._clip(float(value)))
        if self.type == "uniform":
            return self._clip(float(value))
        if self.type == "int":
            n = int((self.high - self.low) // self.step)
            return int(min(max(round((float(value) - self.low) / self.step), 0), n))
        for i, v in enumerate(self.values):
            if v == value:
                return i
        numeric = [i for i, v in enumerate(self.values) if _is_number(v)]
        if numeric and _is_number(value):
            return min(numeric, key=lambda i: _distance(self.values[i], value))
        return 0

    def pymoo_var(self):
        from pymoo.core.variable import Choice, Integer, Real

        if self.type == "log_uniform" and self.integer:
            # each integer n decodes from log(n - 0.5) .. log(n + 0.5), the ends too: bounds at log(min) and
            # log(max) gave min and max half of that, so they were drawn half as often as their neighbours
            return Real(bounds=(math.log(self.low - 0.5), math.log(self.high + 0.5)))
        if self.type == "log_uniform":
            return Real(bounds=(math.log(self.low), math.log(self.high)))
        if self.type == "uniform":
            return Real(bounds=(self.low, self.high))
        if self.type == "int":
            return Integer(bounds=(0, int((self.high - self.low) // self.step)))
        return Choice(options=list(range(len(self.values))))

    def describe(self) -> str:
        if self.type == "categorical":
            shown = [",".join(v) if isinstance(v, tuple) else v for v in self.values]
            return f"categorical {shown}"
        return f"{self.type}{' (integers)' if self.integer else ''} [{self.low:g}, {self.high:g}]"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _distance(a: float, b: float) -> float:
    """How far apart two options are: on a log scale when both are positive (r 16 is nearer 8 than 64)."""
    if a > 0 and b > 0:
        return abs(math.log(a) - math.log(b))
    return abs(a - b)


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    fixed: TrialConfig  # defaults with the file's fixed values applied
    source: str = "<default>"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def decode(self, x: dict[str, Any]) -> TrialConfig:
        """pymoo's individual (dict name -> encoded value) -> a TrialConfig."""
        values = {p.name: p.decode(x[p.name]) for p in self.params}
        return TrialConfig.from_flat(values, base=self.fixed)

    def encode(self, cfg: TrialConfig) -> dict[str, Any]:
        flat = cfg.flat()
        out = {}
        for p in self.params:
            v = flat[p.name]
            if p.name == "lora.target_modules":
                v = normalize_targets(v)
            out[p.name] = p.encode(v)
        return out

    def default_in_space(self) -> TrialConfig:
        """The well-known good default (lr 2e-4, r 16, alpha 32, ...) moved into the space."""
        return self.decode(self.encode(self.fixed))

    def n_configurations(self) -> float:
        """Distinct configurations (inf when any parameter is continuous)."""
        n = 1.0
        for p in self.params:
            if p.type in ("log_uniform", "uniform") and not p.integer:
                return math.inf
            n *= len(p.values) if p.type == "categorical" else int((p.high - p.low) // p.step) + 1
        return n


def default_space() -> SearchSpace:
    """Used when no --search_space is given: the knobs that matter most, in safe ranges."""
    return parse_space(
        {
            "training": {
                "learning_rate": {"type": "log_uniform", "min": 1e-5, "max": 1e-3},
                "batch_size": {"type": "categorical", "values": [4, 8, 16]},
                "warmup_ratio": {"type": "uniform", "min": 0.0, "max": 0.1},
                "weight_decay": {"type": "uniform", "min": 0.0, "max": 0.1},
            },
            "lora": {
                "r": {"type": "categorical", "values": [4, 8, 16, 32]},
                "alpha": {"type": "categorical", "values": [8, 16, 32, 64]},
                "dropout": {"type": "uniform", "min": 0.0, "max": 0.1},
            },
        },
        source="<default space>",
    )


def load_space(path: str | Path) -> SearchSpace:
    data = read_yaml_mapping(path)
    if not data:  # a failed copy or the wrong file: it searched nothing, not even the built-in space
        raise ConfigError(f"{path}: empty (no training, lora or data section); leave --search_space out for the built-in "
                          "space, or see config/hpo_search_space.yaml")
    return parse_space(data, source=str(path))


def _num(where: str, key: str, value: Any, errors: list[str]) -> float | None:
    if value is None:
        errors.append(f"{where}: `{key}` is required")
        return None
    if isinstance(value, bool):
        errors.append(f"{where}: `{key}` must be a number, got {value!r}")
        return None
    try:
        num = float(value)  # "1e-6" is a str to PyYAML; it is still a number to us
    except (TypeError, ValueError):
        errors.append(f"{where}: `{key}` must be a number, got {value!r}")
        return None
    if not math.isfinite(num):  # .inf, .nan, 1e400
        errors.append(f"{where}: `{key}` must be a finite number, got {value!r}")
        return None
    return num


def parse_space(data: dict[str, Any], source: str = "<space>") -> SearchSpace:
    """Validate every parameter and raise once with all problems, naming file and key."""
    errors: list[str] = []
    params: list[Param] = []
    fixed: dict[str, dict[str, Any]] = {}
    field_types = {s: {f.name: f.type for f in dataclasses.fields(k)} for s, k in SECTIONS.items()}
    for section, body in data.items():
        if section not in SECTIONS:
            errors.append(f"{source}: {section}: unknown section; known sections: {list(SECTIONS)}")
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            errors.append(f"{source}: {section}: expected a mapping of parameters, got {type(body).__name__}")
            continue
        for key, spec in body.items():
            name = f"{section}.{key}"
            where = f"{source}: {name}"
            if key not in field_types[section]:
                errors.append(f"{where}: unknown parameter; known in {section}: {sorted(field_types[section])}")
                continue
            ftype = str(field_types[section][key])
            if not isinstance(spec, dict):  # a plain value fixes the parameter
                if isinstance(spec, list) and "tuple" not in ftype and "list" not in ftype:
                    # batch_size: [4, 8, 16], meant as the values to search
                    errors.append(f"{where}: a list fixes no single value; to search these, write "
                                  f"{{type: categorical, values: {_flow(spec)}}}")
                    continue
                if isinstance(spec, bool) and "bool" not in ftype:  # quantization: no (YAML 1.1 reads it as false)
                    errors.append(f"{where}: got {str(spec).lower()}; YAML reads an unquoted no/yes/off/on as false "
                                  "or true: quote the value")
                    continue
                try:
                    fixed.setdefault(section, {})[key] = coerce(section, key, spec, ftype)
                except ConfigError as e:
                    errors.append(f"{source}: {e}")
                continue
            p = _parse_param(name, where, spec, ftype, errors)
            if p is not None:
                params.append(p)
    try:
        base = TrialConfig.from_dict(fixed, source=source)
    except ConfigError as e:
        errors.append(str(e))
        base = TrialConfig()
    # every endpoint and option must itself make a valid trial (e.g. lora.r <= 0, dropout >= 1)
    for p in params:
        probes = p.values if p.type == "categorical" else (p.low, p.high)
        for v in probes:
            try:
                TrialConfig.from_flat({p.name: v}, base=base)
            except ConfigError as e:
                msg = str(e).replace("<search>: ", "")
                errors.append(f"{source}: {p.name}: value {_show(v)} is out of range ({msg.split(': ', 1)[-1]})")
                break
    if errors:
        raise ConfigError("\n".join(errors))  # one line each (cli.fail)
    return SearchSpace(params=tuple(params), fixed=base, source=source)


def _show(v: Any) -> str:
    return ",".join(v) if isinstance(v, tuple) else repr(v)


def _flow(values: list) -> str:
    """A YAML list as a person writes it in a flow mapping: [4, 8, 16], [linear, cosine]."""
    return "[" + ", ".join(str(v) for v in values) + "]"


def _parse_param(name: str, where: str, spec: dict, ftype: str, errors: list[str]) -> Param | None:
    section, key = name.split(".", 1)
    unknown = set(spec) - PARAM_KEYS
    if unknown:
        errors.append(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PARAM_KEYS)}")
        return None
    typ = spec.get("type")
    if typ not in TYPES:
        errors.append(f"{where}: `type` must be one of {list(TYPES)}, got {typ!r}")
        return None
    if typ == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            errors.append(f"{where}: categorical needs a non-empty `values` list, got {values!r}")
            return None
        out = []
        for v in values:
            try:
                out.append(coerce(section, key, v, ftype))
            except ConfigError as e:
                errors.append(f"{where}: {str(e).split(': ', 1)[-1]}")
                return None
        if len(set(out)) != len(out):
            errors.append(f"{where}: `values` must be distinct, got {values!r}")
            return None
        extra = sorted(k for k in ("min", "max", "step") if k in spec)
        if extra:
            errors.append(f"{where}: {', '.join(f'`{k}`' for k in extra)} only appl{'ies' if len(extra) == 1 else 'y'} "
                          "to types uniform, log_uniform and int, not categorical (its `values` are the choices)")
            return None
        ordered = spec.get("ordered")
        if ordered is not None and not isinstance(ordered, bool):
            errors.append(f"{where}: `ordered` must be true or false, got {ordered!r}")
            return None
        return Param(name, typ, values=tuple(out), ordered=ordered)
    for only in ("values", "ordered"):
        if only in spec:
            errors.append(f"{where}: `{only}` only applies to type categorical")
            return None
    if key == "target_modules" or ftype not in ("int", "float"):
        errors.append(f"{where}: a {ftype} parameter takes type categorical, not {typ}")
        return None
    n_before = len(errors)
    low = _num(where, "min", spec.get("min"), errors)
    high = _num(where, "max", spec.get("max"), errors)
    step = spec.get("step", 1)
    if len(errors) > n_before:
        return None
    if not low < high:
        errors.append(f"{where}: `min < max` must hold, got min={low:g}, max={high:g}"
                      + (f" (to fix it at {low:g}, give the plain value: `{where.rsplit('.', 1)[-1]}: {low:g}`)"
                         if low == high else ""))
        return None
    if typ == "log_uniform" and low <= 0:
        errors.append(f"{where}: log_uniform bounds must be > 0, got min={low:g}")
        return None
    if typ == "int":
        if low != int(low) or high != int(high):
            errors.append(f"{where}: int bounds must be integers, got min={low:g}, max={high:g}")
            return None
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            errors.append(f"{where}: `step` must be an integer >= 1, got {step!r}")
            return None
        if (int(high) - int(low)) % step:  # else `max` is never tried: the values are min, min + step, ...
            errors.append(f"{where}: `max - min` must be a multiple of `step` (min + k x step reaches max), got "
                          f"min={low:g}, max={high:g}, step={step}")
            return None
        return Param(name, typ, low=int(low), high=int(high), step=step)
    if "step" in spec:
        errors.append(f"{where}: `step` only applies to type int")
        return None
    if ftype == "int" and typ == "log_uniform":  # integers on a log scale (r 4..64: 8 is as likely as 32)
        if low != int(low) or high != int(high):
            errors.append(f"{where}: log_uniform bounds of an integer parameter must be integers, got min={low:g}, max={high:g}")
            return None
        return Param(name, typ, low=int(low), high=int(high), integer=True)
    if ftype == "int":
        errors.append(f"{where}: integer parameter takes type int, log_uniform or categorical, not {typ}")
        return None
    return Param(name, typ, low=low, high=high)
