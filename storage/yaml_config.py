"""YAML config files: reading with dotted-key overrides, the strict pydantic section base, one-line errors."""

from __future__ import annotations

import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from maskforge.storage.catalogue import is_selector, resolve_selector
from maskforge.storage.fs import location_key

#: A path, URL or model id in a config: at least one character. An empty one would quietly mean "here" (out_dir)
#: or "the default" (checkpoint), e.g. from `--out ""` or a blank YAML value written as "".
PathText = Annotated[str, StringConstraints(min_length=1)]
#: A seed in a config: 0 to 2^32 - 1, what numpy's and torch's generators all take (a negative seed or one past 2^64
#: failed deep inside a stage, after the server had started).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
#: A learner's `run.save_every_s`: seconds of training between two resumable states (models/train_state.py) of a
#: long loop; 0 never writes one. How often progress is kept does not change what is learned: left out of hash().
SaveEvery = Annotated[
    float,
    Field(
        ge=0,
        le=86_400,
        description="Seconds of training between resumable states in the stage folder's resume/ (0: none); a "
        "rerun of a stage cut short continues from the last one.",
    ),
]


class ConfigError(ValueError):
    """An invalid configuration: the message names the file, the field and what was expected."""


class StrictConfig(BaseModel):
    """Base for config sections: unknown keys are errors, values are frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: object, info: ValidationInfo) -> object:
        """Refuse a YAML boolean (`yes`, `on`, `true`) where the field wants something else: pydantic would read it
        as 1 or 0, and `seed: yes` would quietly become seed 1."""
        if isinstance(value, bool) and not _accepts_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(
                f"a boolean ({value}) where a number or text is expected; YAML reads yes/no/on/off as booleans"
            )
        return value

    def resolved(self) -> dict:
        """Return the fully resolved config as plain JSON-compatible data (every default filled in)."""
        return self.model_dump(mode="json")


def distinct_runs(runs, field: str):
    """Return `runs` (a config's list of run folders) unless one is listed twice: a ValueError naming it (the same run
    twice would weigh its samples double and give the stage another hash). Runs are compared by where they point
    (storage/fs.py:location_key), not by spelling: `runs/demo` and `runs/demo/` are one run."""
    seen: dict[str, str] = {}
    for run in runs:
        key = location_key(run)
        if key in seen:
            same = run if seen[key] == run else f"{seen[key]} and {run}"
            raise ValueError(f"{field}: a run is listed twice ({same}); list each run once")
        seen[key] = run
    return runs


def digest(data: dict) -> str:
    """Return the sha256 of `data` as canonical JSON (sorted keys, json's default separators): the one recipe of
    the config hashes, so a stored config can be checked against the hash that names it."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class HashedConfig(StrictConfig):
    """A learner's whole config, whose hash() names its benchmark rows: the resolved config minus UNHASHED fields."""

    #: (section, field) pairs that name synthetic runs (a run folder, or a list of them): a run selector there
    #: (`latest:toy/0`, `last:7:toy/0`, storage/catalogue.py) is replaced by the run URLs it names when the config
    #: validates, so hash(), the stored config and every benchmark row name exactly the data the learner saw
    RUN_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: (section, field) pairs hash() leaves out: where outputs go and how fast they come, not what is computed
    UNHASHED: ClassVar[tuple[tuple[str, str], ...]] = (
        ("run", "out_dir"),
        ("run", "device"),
        ("run", "threads"),
        ("run", "save_every_s"),
        ("eval", "results_dir"),
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_run_selectors(cls, data: Any) -> Any:
        """Replace run selectors in RUN_FIELDS by the run URLs they name, from the catalogue of run.out_dir (or the
        selector's @RUNS); a selector that names no run, or several for a one-run field, is an error naming it."""
        if not isinstance(data, dict) or not cls.RUN_FIELDS:
            return data
        data = dict(data)
        root = str((data.get("run") or {}).get("out_dir") or "runs")
        for section, name in cls.RUN_FIELDS:
            block = data.get(section)
            value = block.get(name) if isinstance(block, dict) else None
            refs = [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []
            if not any(isinstance(ref, str) and is_selector(ref) for ref in refs):
                continue
            field = f"{section}.{name}"
            urls = []
            for ref in refs:
                urls += resolve_selector(ref, root, field) if isinstance(ref, str) and is_selector(ref) else [ref]
            if isinstance(value, str):
                if len(urls) != 1:
                    raise ValueError(f"{field}: {value!r} names {len(urls)} runs; this field takes one (latest:...)")
                urls = urls[0]
            data[section] = {**block, name: urls}
        return data

    def hashed(self) -> dict:
        """Return what hash() covers: the resolved config without the UNHASHED fields."""
        data = self.resolved()
        for section, field in self.UNHASHED:
            data[section].pop(field)
        return data

    def hash(self) -> str:
        """Return the sha256 of hashed() (storage/yaml_config.py:digest)."""
        return digest(self.hashed())


def _accepts_bool(annotation: object) -> bool:
    """Whether a field annotation admits a bool (bool itself, or a union or Literal holding one)."""
    if annotation is bool:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return any(isinstance(arg, bool) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_accepts_bool(arg) for arg in typing.get_args(annotation))
    return annotation is typing.Any


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        """Build a mapping; a duplicate key is an error naming its line."""
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


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
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; expected a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); expected a YAML config file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError(f"{path}: not valid YAML at {where}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping of config sections (see configs/demo.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for depth, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                section = ".".join(parents[: depth + 1])
                raise ConfigError(
                    f"{path}: section '{section}' is {node!r}; expected a mapping (the override {dotted} needs it)"
                )
        node[leaf] = value
    return data
