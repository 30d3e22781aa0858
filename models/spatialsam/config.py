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


def load_yaml(name_or_path: str | Path) -> dict:
    doc = yaml.safe_load(config_path(name_or_path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"config: {name_or_path} must hold a mapping")
    return doc


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
