"""The front page and the docs site: README.md stays short and its links land, and the generated configuration
reference lists every field the config models hold (`make test` builds the site itself with mkdocs --strict)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HOOKS = ROOT / "docs" / "hooks"
#: A Markdown link or image target: [text](target) or ![alt](target), without a title.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _hook(name: str):
    """Import a mkdocs hook module of docs/hooks/ by file (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"docs_hooks_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _headings(path: Path) -> list[str]:
    """Return the text of every ATX heading of a Markdown file, fenced code blocks skipped."""
    found, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.append(m.group(1))
    return found


def _plain(heading: str) -> str:
    """Return a heading's text as rendered: links reduced to their text, code and emphasis marks dropped."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")


def _github_slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation but '-' and '_' dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _mkdocs_slug(text: str) -> str:
    """mkdocs' heading anchor (Python-Markdown's toc extension, the site's default)."""
    return slugify(text, "-")


def _anchors(path: Path, slug) -> set[str]:
    """Return the anchors of a Markdown file's headings under one slug rule (repeats numbered, either style)."""
    out, seen = set(), {}
    for heading in _headings(path):
        base = slug(_plain(heading))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.update({base} if n == 0 else {f"{base}-{n}", f"{base}_{n}"})
    return out


def test_the_readme_is_a_front_page_of_at_most_250_lines():
    """The reference lives in docs/; the front page says what maskforge is and where to read on."""
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250: move reference text into docs/)"


def test_every_relative_link_of_the_readme_resolves():
    """Each relative link names a file that exists, and its #anchor a heading there under both GitHub's slug rule
    (where the README is read) and mkdocs' (where the page is served)."""
    targets = [t for t in LINK.findall(README.read_text()) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    assert targets, "no relative link found in README.md"
    broken = []
    for target in targets:
        file, _, anchor = target.partition("#")
        path = (ROOT / file) if file else README
        if not path.is_file():
            broken.append(f"{target}: no file {file}")
        elif anchor and not all(anchor in _anchors(path, slug) for slug in (_github_slug, _mkdocs_slug)):
            broken.append(f"{target}: no heading with anchor #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, broken


def _schema_leaves(schema: dict, defs: dict, prefix: str = ""):
    """Yield the dotted path of every leaf field in a pydantic JSON schema: a property that holds no object with
    properties (models nest directly or optionally, per list item `[]`, or per dict value `.<key>`)."""
    for name, prop in schema.get("properties", {}).items():
        nested = list(_objects(prop, defs, ""))
        if not nested:
            yield f"{prefix}{name}"
        for sub, suffix in nested:
            yield from _schema_leaves(sub, defs, f"{prefix}{name}{suffix}.")


def _objects(prop: dict, defs: dict, suffix: str):
    """Yield (model schema, path suffix) for every model a property's schema can hold."""
    if "$ref" in prop:
        target = defs[prop["$ref"].rsplit("/", 1)[-1]]
        if "properties" in target:
            yield target, suffix
    for key in ("anyOf", "oneOf", "allOf"):
        for member in prop.get(key, []):
            yield from _objects(member, defs, suffix)
    items = prop.get("prefixItems", []) + ([prop["items"]] if isinstance(prop.get("items"), dict) else [])
    for item in items:
        yield from _objects(item, defs, suffix + "[]")
    if isinstance(prop.get("additionalProperties"), dict):
        yield from _objects(prop["additionalProperties"], defs, suffix + ".<key>")


@pytest.mark.parametrize("kind", ["Generation", "HSNet", "GFSS", "DiffewS", "MaskDiff", "Toy training"])
def test_the_configuration_reference_lists_every_leaf_field(kind):
    """Every leaf field of the config kind's root model (read from its JSON schema, not the hook's own walk) has a
    row in the generated page, so a new field cannot go unlisted."""
    hook = _hook("config_reference")
    (model,) = [model for title, model, _ in hook.KINDS if title == kind]
    schema = model.model_json_schema()
    leaves = set(_schema_leaves(schema, schema.get("$defs", {})))
    assert len(leaves) > 5, leaves  # the walk reached the sections
    page = hook.reference_markdown()
    section = page.split(f"## {kind} (`{model.__name__}`)", 1)[1].split("\n## ", 1)[0]
    missing = sorted(path for path in leaves if f"| `{path}` |" not in section)
    assert not missing, f"{kind}: fields without a row in the configuration reference: {missing}"
    assert leaves == {row.path for row in hook.rows(model) if row.leaf}


def test_the_reference_covers_the_six_config_kinds_and_their_bounds():
    """One table per config kind, in the brief's order, with types, defaults and bounds written out."""
    hook = _hook("config_reference")
    titles = [title for title, _, _ in hook.KINDS]
    assert titles == ["Generation", "HSNet", "GFSS", "DiffewS", "MaskDiff", "Toy training"]
    page = hook.reference_markdown()
    assert "| `run.seed` | `int` | `0` | ≥ 0; ≤ 4294967295 |" in page
    assert '| `dataset.name` | `"toy" \\| "pascal" \\| "coco" \\| "fss"` | `toy` | one of `toy`, `pascal`' in page
    assert "| `diffusion.model` | `str` | required | min length 1 |" in page
    # a section's own default sets its fields: toy training's `ground` is a DiffusionTrain with other steps
    (toy,) = [model for title, model, _ in hook.KINDS if title == "Toy training"]
    ground, diffusion = toy().ground.steps, toy().diffusion.steps
    assert ground != diffusion
    assert f"| `ground.steps` | `int` | `{ground}` |" in page
    assert f"| `diffusion.steps` | `int` | `{diffusion}` |" in page


def test_table_code_spans_lose_their_pipe_escapes_in_the_site():
    """GitHub needs `\\|` inside a table's code span; the site's hook turns it back into `|`, nowhere else."""
    unescape = _hook("table_pipes").unescape_table_pipes
    text = "| `a \\| b` | c \\| d |\n`e \\| f`\n```\n| `g \\| h` |\n```\n"
    assert unescape(text) == "| `a | b` | c \\| d |\n`e \\| f`\n```\n| `g \\| h` |\n```\n"
