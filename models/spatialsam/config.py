"""Configs as data: YAML files in spatialsam/configs/ (or any path) -> TrainConfig."""

from __future__ import annotations

from pathlib import Path

import yaml

from .train_unet import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_path(name_or_path: str | Path) -> Path:
    """A YAML path as given, or ``spatialsam/configs/<name>.yaml``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    q = CONFIG_DIR / f"{name_or_path}.yaml"
    if q.exists():
        return q
    known = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
    raise ValueError(f"config: no file {name_or_path!r} and no built-in config of that name (known: {known})")


def load_yaml(name_or_path: str | Path, _seen: tuple[str, ...] = ()) -> dict:
    """The config's mapping. ``base: <name or path>`` starts from that config instead and applies
    this file's keys on top (mappings such as ``unet`` merged key by key), so a variant states only
    what it changes."""
    doc = yaml.safe_load(config_path(name_or_path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"config: {name_or_path} must hold a mapping")
    if "base" not in doc:
        return doc
    base_name = str(doc.pop("base"))
    if base_name in _seen or base_name == str(name_or_path):
        raise ValueError(f"config: base: {name_or_path} inherits from itself through {base_name!r}")
    merged = load_yaml(base_name, (*_seen, str(name_or_path)))
    for k, v in doc.items():
        merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_train_config(name_or_path: str | Path, **overrides: object) -> TrainConfig:
    """TrainConfig from YAML, with keyword overrides (None values are ignored). Unknown keys are
    rejected so a misspelt field is not silently ignored."""
    doc = load_yaml(name_or_path)
    doc.update({k: v for k, v in overrides.items() if v is not None})
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"config: unknown keys {unknown} (known: {sorted(known)})")
    return TrainConfig(**doc)  # type: ignore[arg-type]
