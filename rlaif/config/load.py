"""YAML files plus dotted command-line overrides into a typed, validated Config; and back (to_dict, save_config).

Type coercion names the key and what is allowed; model.dtype=auto is resolved to what the device computes natively
(native_bf16) before validation.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from rlaif.config.schema import Config, ConfigError, ModelConfig
from rlaif.config.validate import validate


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: got {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}")
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None) and value is None:
                return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, get_args(tp)[0]) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; accept what float() accepts
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _key(f: dataclasses.Field) -> str:
    """A field's name in YAML (a Python keyword such as `async` is spelt `async_` in the dataclass)."""
    return f.metadata.get("key", f.name)


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {_key(f): f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'; allowed keys here: {', '.join(fields)}")
        kwargs[fields[key]] = _coerce(prefix + key, value, hints[fields[key]])
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply `a.b.c=value` overrides (values parsed as YAML), validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a text (UTF-8) YAML file: byte {exc.object[exc.start]:#04x} at offset "
                              f"{exc.start} cannot be decoded") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            what = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ConfigError(f"{where}: malformed YAML: {what}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        tree = loaded or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from exc
        _set_dotted(tree, key.strip(), value)
    cfg = _build(Config, tree)
    resolve_dtypes(cfg)
    validate(cfg)
    return cfg


@functools.cache
def native_bf16(device: str, cpuinfo: str = "/proc/cpuinfo") -> tuple[bool, str]:
    """Does `device` compute bfloat16 natively (what model.dtype=auto picks bf16 for), and why, in words."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():  # `ray job submit` from a CPU head: the GPUs are on the workers
            return True, "device cuda (the driver sees no GPU; every GPU vLLM serves bf16 on has it since Ampere)"
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"{torch.cuda.get_device_name()} {'computes' if ok else 'does not compute'} bf16 natively"
    try:
        flags = re.search(r"^flags\s*:(.*)$", Path(cpuinfo).read_text(encoding="utf-8"), re.M).group(1).split()
    except (OSError, AttributeError):
        return False, f"the CPU's features could not be read from {cpuinfo}"
    found = sorted(set(flags) & {"avx512_bf16", "amx_bf16"})
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, "this CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be emulated, slower than fp32)"


def resolve_dtypes(cfg: Config) -> None:
    """Replace every model.dtype=auto by what the device computes natively: bfloat16, else float32."""
    autos = [m for m in _model_configs(cfg) if m.dtype == "auto"]
    if autos:
        bf16 = native_bf16(cfg.device)[0]
        for m in autos:
            m.dtype = "bfloat16" if bf16 else "float32"


def _model_configs(node: Any) -> list[ModelConfig]:
    if isinstance(node, ModelConfig):
        return [node]
    if dataclasses.is_dataclass(node):
        return [m for f in dataclasses.fields(node) for m in _model_configs(getattr(node, f.name))]
    return []


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as YAML would spell it."""
    return {_key(f): to_dict(v) if dataclasses.is_dataclass(v := getattr(cfg, f.name)) else v
            for f in dataclasses.fields(cfg)}


def save_config(cfg: Config, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
