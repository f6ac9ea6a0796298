"""One tag vocabulary: every ``yxanul.*`` and ``mlflow.*`` tag name is a constant of ``yxanul.tags``, and no
other module of the platform, its jobs or its scripts spells one as a string literal (docstrings and
comments may name them)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from yxanul import tags

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"(?<![\w/.-])(yxanul|mlflow)\.([A-Za-z_][\w.]*)")


def _is_module(prefix: str, rest: str) -> bool:
    """``yxanul.config``, ``mlflow.entities``: a module path, not a tag name."""
    head = rest.split(".")[0]
    if prefix == "yxanul":
        return (ROOT / "platform" / "yxanul" / f"{head}.py").is_file() or (ROOT / "platform" / "yxanul" / head).is_dir()
    return importlib.util.find_spec(f"mlflow.{head}") is not None


def _literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the string constants of ``path`` that are not docstrings (a bare string statement)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_tag_name_is_spelled_outside_the_tag_module():
    files = [p for folder in ("platform", "jobs", "scripts") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 50
    found = []
    for path in files:
        if path == ROOT / "platform" / "yxanul" / "tags.py":
            continue
        for line, text in _literals(path):
            for match in NAME.finditer(text):
                if match.group(0) == "mlflow.db" or _is_module(match.group(1), match.group(2)):
                    continue
                found.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)}")
    assert not found, "tag names spelled as literals (use a constant of yxanul.tags):\n" + "\n".join(found)


def test_the_scan_finds_a_literal_tag(tmp_path):
    """The scan above is not blind: a literal tag name in code is found, a docstring and a module path are not."""
    probe = tmp_path / "probe.py"
    probe.write_text('"""Reads yxanul.status."""\nimport x\nSTATUS = "yxanul.status"\nx.f(f"tags.`mlflow.parentRunId` = 1")\n'
                     'y = "yxanul.config"\n')
    hits = [m.group(0) for _, text in _literals(probe) for m in NAME.finditer(text)
            if not _is_module(m.group(1), m.group(2))]
    assert hits == ["yxanul.status", "mlflow.parentRunId"]


def test_tag_constants_are_unique_and_namespaced():
    values = {k: v for k, v in vars(tags).items() if k.endswith(("_TAG", "_TAG_PREFIX"))}
    assert len(values) >= 40
    assert len(set(values.values())) == len(values), "two constants name the same tag"
    assert all(v.startswith(("yxanul.", "mlflow.")) for v in values.values())
    assert tags.EXPERIMENT_KIND_TAG == "mlflow.experimentKind" and tags.EXPERIMENT_KIND == "custom_model_development"
