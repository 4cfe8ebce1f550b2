"""YAML config files: reading with dotted-key overrides, the strict pydantic section base, one-line errors."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """An invalid configuration: the message names the file, the field and what was expected."""


class StrictConfig(BaseModel):
    """Base for config sections: unknown keys are errors, values are frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def resolved(self) -> dict:
        """Return the fully resolved config as plain JSON-compatible data (every default filled in)."""
        return self.model_dump(mode="json")


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration ({err.error_count()} error(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  field '{loc}': {e['msg']}{got_text}")
    return "\n".join(lines)


def validate_model(model: type[BaseModel], data: dict, source: str):
    """Validate a mapping into a pydantic model; a ConfigError names `source`, each bad field and what was expected."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def read_yaml(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config file as a mapping and apply dotted-key overrides like {"run.out_dir": "runs"}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data
