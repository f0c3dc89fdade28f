"""gan_core stays pure PyTorch/numpy: importing every module pulls in none of the orchestration stack."""
import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import gan_core

FORBIDDEN = ("prefect", "mlflow", "ray", "dvc", "boto3")


def test_no_forbidden_import_statements():
    root = Path(gan_core.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_all_of_gan_core_loads_no_forbidden_module():
    modules = [m.name for m in pkgutil.walk_packages(gan_core.__path__, "gan_core.")]
    assert "gan_core.models.dcgan" in modules and "gan_core.checkpoint" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
