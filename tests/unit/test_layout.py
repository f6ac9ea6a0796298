"""The storage layout: one owner of every path under run.storage_path (yxanul.layout), and its users asking it."""

from __future__ import annotations

import ast
from pathlib import Path

from yxanul.config import load_config
from yxanul.layout import Layout

ROOT = Path(__file__).resolve().parents[2]


def test_paths_under_a_local_storage_are_absolute_and_shared_caches_sit_at_the_top(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layout = Layout("outputs/ray/")
    root = tmp_path / "outputs" / "ray"
    assert layout.root == str(root) and layout.is_local
    assert layout.run_dir("pulse") == f"{root}/pulse" and layout.run_log("pulse") == root / "pulse.log"
    assert layout.worker_markers("pulse") == f"{root}/pulse/workers"
    assert layout.sweeps == f"{root}/sweeps" and layout.sweep_dir("grid") == f"{root}/sweeps/grid"
    assert layout.sweep_log("grid") == root / "sweeps" / "grid.log"
    assert layout.fp8_plans == root / "fp8-plans" and layout.compile_cache == root / "compile-cache"
    assert layout.report_dir("grid") == tmp_path / "outputs" / "reports" / "grid"
    assert Layout.of(load_config(None, ["run.storage_path=outputs/ray"])).root == layout.root


def test_a_uri_storage_keeps_local_files_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    layout = Layout("s3://bucket/runs")
    assert not layout.is_local and layout.run_dir("pulse") == "s3://bucket/runs/pulse"
    assert layout.sweep_dir("grid") == "s3://bucket/runs/sweeps/grid"
    assert layout.run_log("pulse") == tmp_path / "outputs" / "logs" / "pulse.log"
    assert layout.sweep_log("grid") == tmp_path / "outputs" / "logs" / "grid.log"
    assert layout.worker_markers("pulse") is None
    assert layout.fp8_plans == tmp_path / "home" / ".cache" / "yxanul" / "fp8-plans"
    assert layout.compile_cache == tmp_path / "home" / ".cache" / "yxanul" / "compile-cache"


def _offenders(path: Path) -> list[str]:
    """Where ``path`` builds a path under the storage itself: a layout folder name as a string literal (not a
    docstring), or ``run.storage_path`` turned into a path (a call argument, an operand)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if path.name == "spec.py" and node.value == "sweeps":  # experiments/sweeps/, the sweep files
                continue
            if node.value in ("sweeps", "fp8-plans", "compile-cache", "workers", "outputs/logs") or \
                    node.value.startswith(("/sweeps", "/fp8-plans")):
                found.append(f"{node.lineno}: {node.value!r}")
        # naming the value in a message (an f-string) is fine
        operands = [*node.args] if isinstance(node, ast.Call) else [node.left, node.right] \
            if isinstance(node, ast.BinOp) else []
        for operand in operands:
            if isinstance(operand, ast.Attribute) and operand.attr == "storage_path" and path.name != "plan.py":
                found.append(f"{operand.lineno}: .storage_path")
    return found


def test_no_other_module_builds_paths_under_the_storage():
    """The folder names of the layout appear as string literals in yxanul.layout only, and nothing but the
    layout (and the sweep plan, which makes it absolute for the trials) turns run.storage_path into a path."""
    offenders = [f"{path.relative_to(ROOT)}:{hit}"
                 for path in [*(ROOT / "platform").rglob("*.py"), *(ROOT / "jobs").glob("*.py")]
                 if path.name not in ("layout.py", "config.py") for hit in _offenders(path)]
    assert not offenders, "paths under run.storage_path built outside yxanul.layout:\n" + "\n".join(offenders)


def test_the_layout_scan_is_not_blind(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""Writes to sweeps."""\nfrom pathlib import Path\n'
                     'a = Path(cfg.run.storage_path) / "fp8-plans"\nb = cfg.run.storage_path + "/x"\n'
                     'c = f"run.storage_path={cfg.run.storage_path}"\n')
    assert sorted(_offenders(probe)) == ["3: 'fp8-plans'", "3: .storage_path", "4: .storage_path"]
