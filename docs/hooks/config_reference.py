"""mkdocs hook: the configuration reference page (configuration.md), generated from the pydantic models at build time.

Every field of each config kind, nested sections as dotted paths, with its type, default, constraints and
description, read from the models themselves so the page cannot drift from the code (tests/test_docs.py checks that
every leaf field is listed).
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

from mkdocs.structure.files import File, Files
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from maskforge.models.toy_train_config import ToyTrainConfig
from maskforge.tasks.config import MaskforgeConfig
from maskforge.tasks.registry import learners

#: The shipped config files (the repository's configs/ folder).
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: The generated page's path inside the site.
PAGE = "configuration.md"

#: (title, root model, what reads it): one table per config kind, in this order.
KINDS: tuple[tuple[str, type[BaseModel], str], ...] = (
    (
        "Generation",
        MaskforgeConfig,
        "`maskforge generate CONFIG`; `configs/demo.yaml`, `configs/{pascal,coco,fss}.yaml`",
    ),
    # every registered learner's config kind (tasks/registry.py), with its commands and its config files
    *(
        (
            one.title,
            one.config_class,
            f"`{one.commands_line()} CONFIG`; "
            + ", ".join(f"`configs/{p.name}`" for p in sorted(CONFIGS.glob(f"{one.name}-*.yaml"))),
        )
        for one in learners()
    ),
    (
        "Toy training",
        ToyTrainConfig,
        "`maskforge toy train-diffusion|ground|train-controlnet CONFIG`; `configs/toy-train.yaml`",
    ),
)

#: annotated-types / pydantic constraint attributes and how the page writes them.
_BOUNDS = (("gt", "> {}"), ("ge", "≥ {}"), ("lt", "< {}"), ("le", "≤ {}"), ("multiple_of", "multiple of {}"))
_LENGTHS = (("min_length", "min length {}"), ("max_length", "max length {}"), ("pattern", "pattern `{}`"))


class Row(typing.NamedTuple):
    """One field of the reference: a section (its type is a model) or a leaf."""

    path: str
    type: str
    default: str
    constraints: str
    description: str
    leaf: bool


def _members(annotation: object) -> tuple[object, ...]:
    """Return the members of a union (X | Y, Optional[X]), else the annotation alone."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _strip(annotation: object) -> tuple[object, list[object]]:
    """Return an Annotated type's inner type and its metadata (a plain type: itself and no metadata)."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        return inner, metadata
    return annotation, []


def type_text(annotation: object) -> str:
    """Return a readable type: `int`, `str | null`, `list[str]`, `bool | "auto"`, a model by its class name."""
    annotation, _ = _strip(annotation)
    if annotation is type(None) or annotation is None:
        return "null"
    if annotation is typing.Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_text(args[0])}, ...]"
        return f"tuple[{', '.join(type_text(arg) for arg in args)}]"
    if origin in (list, set, frozenset, dict):
        return f"{origin.__name__}[{', '.join(type_text(arg) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _constraint_texts(metadata: list[object]) -> list[str]:
    """Return the bounds, lengths and patterns held by a field's metadata (annotated-types or pydantic objects)."""
    out = []
    for item in metadata:
        for attr, text in _BOUNDS + _LENGTHS:
            value = getattr(item, attr, None)
            if value is not None:
                out.append(text.format(value))
    return out


def _nested_constraints(annotation: object, where: str = "") -> list[str]:
    """Return the constraints inside a type: an Annotated member or item (`items: min length 1`), a Literal's
    choices (`one of ...`), each prefixed with where it applies."""
    inner, metadata = _strip(annotation)
    out = [f"{where}{text}" for text in _constraint_texts(metadata)]
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is typing.Literal:
        out.append(f"{where}one of " + ", ".join(f"`{arg}`" for arg in args))
    elif origin in (typing.Union, types.UnionType):
        # choices only where every member is one (`bool | "auto"` says it in its type)
        choices = all(typing.get_origin(_strip(arg)[0]) is typing.Literal for arg in args if arg is not type(None))
        for arg in args:
            if choices or typing.get_origin(_strip(arg)[0]) is not typing.Literal:
                out += _nested_constraints(arg, where)
    elif origin in (list, tuple, set, frozenset):
        for arg in args:
            if arg is not Ellipsis:
                out += _nested_constraints(arg, where or "items: ")
    elif origin is dict:
        out += _nested_constraints(args[0], "keys: ")
        out += _nested_constraints(args[1], "values: ")
    return out


def constraints_text(field: FieldInfo) -> str:
    """Return a field's constraints as one line: bounds, lengths, pattern and choices, those of items included."""
    texts = _constraint_texts(field.metadata) + _nested_constraints(field.annotation)
    return "; ".join(dict.fromkeys(texts))


def _sections(annotation: object) -> list[tuple[type[BaseModel], str]]:
    """Return the models a field holds and the path suffix their fields go under: a model or optional model ("")
    its fields directly, a list or tuple of models ("[]") per item, a dict of models (".<key>") per key."""
    found = []
    for member in _members(_strip(annotation)[0]):
        member = _strip(member)[0]
        origin, args = typing.get_origin(member), typing.get_args(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            found.append((member, ""))
        elif origin in (list, tuple, set, frozenset):
            found += [(model, "[]" + suffix) for arg in args if arg is not Ellipsis for model, suffix in _sections(arg)]
        elif origin is dict:
            found += [(model, ".<key>" + suffix) for model, suffix in _sections(args[1])]
    return found


def _default(field: FieldInfo) -> object:
    """Return a field's default (a default factory called), or PydanticUndefined when the field is required."""
    if field.default_factory is not None:
        return field.get_default(call_default_factory=True, validated_data={})
    return field.default


def default_text(value: object) -> str:
    """Return a default as the page shows it: `required`, `null`, a string as is, anything else as JSON."""
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "the fields below"
    if isinstance(value, str) and value:
        return f"`{value}`"
    return f"`{json.dumps(to_jsonable_python(value))}`"


def rows(model: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> list[Row]:
    """Return every field of `model` and of its nested models, depth first, as Rows. `defaults` is the instance the
    parent field defaults to (a section's default may set its fields otherwise than the section class does)."""
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        default = getattr(defaults, name) if defaults is not None else _default(field)
        sections = _sections(field.annotation)
        description = field.description or ""
        if sections and not description:
            description = (sections[0][0].__doc__ or "").strip().splitlines()[0]
        out.append(
            Row(
                path,
                type_text(field.annotation),
                default_text(default),
                constraints_text(field),
                description,
                leaf=not sections,
            )
        )
        for section, suffix in sections:
            inner = default if isinstance(default, section) and not suffix else None
            if len(sections) > 1:  # a union of models: say which one each field belongs to
                out += [
                    Row(r.path, r.type, r.default, r.constraints, f"({section.__name__}) {r.description}", r.leaf)
                    for r in rows(section, f"{path}{suffix}.", inner)
                ]
            else:
                out += rows(section, f"{path}{suffix}.", inner)
    return out


def _escape(text: str) -> str:
    """Escape text for a table cell: pipes everywhere; emphasis markers and angle brackets outside code spans."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside code spans
        parts[i] = parts[i].replace("*", r"\*").replace("_", r"\_").replace("<", "&lt;")
    return "`".join(parts).replace("|", r"\|")


def table(model: type[BaseModel]) -> str:
    """Return the Markdown table of every field of a root model."""
    lines = ["| field | type | default | constraints | description |", "| --- | --- | --- | --- | --- |"]
    for row in rows(model):
        cells = (f"`{row.path}`", f"`{row.type}`", row.default, row.constraints, row.description)
        lines.append("| " + " | ".join(_escape(cell) for cell in cells) + " |")
    return "\n".join(lines)


def reference_markdown() -> str:
    """Return the whole configuration reference page."""
    parts = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models when the site is built (`docs/hooks/config_reference.py`), so it lists "
        "exactly what the code accepts. Every config is a YAML file validated before any work: unknown keys are "
        "errors, and an error names the file, the field and what was expected. A dotted path is a key inside a "
        "section (`run.out_dir` is `out_dir:` under `run:`); a section that may be absent has type `... | null`. "
        "Checks between fields (a model validator, e.g. `refinement` needs `diffusion`) are not listed here; the "
        "hand-written tables on [Generation](generation.md#configuration) and each learner's page say what the "
        "fields mean and where their defaults come from.",
        "",
    ]
    for title, model, used_by in KINDS:
        doc = (model.__doc__ or "").strip().splitlines()[0]
        parts += [f"## {title} (`{model.__name__}`)", "", f"{doc} Read by {used_by}.", "", table(model), ""]
    return "\n".join(parts)


def on_files(files: Files, config) -> Files:
    """mkdocs hook: add the generated configuration reference to the site's files."""
    files.append(File.generated(config, PAGE, content=reference_markdown()))
    return files
