"""The package as pip installs it (pyproject.toml): `python -m anthropic_gateway` and the `anthropic-gateway`
console script work outside a checkout, with the data files the gateway reads (`make dev` installs it so)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_package_runs_from_anywhere(tmp_path: Path) -> None:
    source, target, elsewhere = tmp_path / "source", tmp_path / "installed", tmp_path / "elsewhere"
    elsewhere.mkdir()
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    ignored = shutil.ignore_patterns("__pycache__", "*.egg-info", "Makefile")
    shutil.copytree(ROOT / "layers" / "gateway", source / "layers" / "gateway", ignore=ignored)
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*install, "--target", str(target), str(source)], check=True, capture_output=True, cwd=tmp_path)
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    environment |= {"PYTHONPATH": str(target), "MASTER_KEY": "sk-master-unused", "GATEWAY_URL": "http://127.0.0.1:9"}

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, cwd=elsewhere, env=environment, timeout=60)

    usage = run(sys.executable, "-m", "anthropic_gateway")
    assert usage.returncode == 2 and "serve | keys" in usage.stderr
    script = run(sys.executable, str(target / "bin" / "anthropic-gateway"), "keys", "--help")
    assert script.returncode == 0 and "generate" in script.stdout
    probe = (
        "from pathlib import Path; import anthropic_gateway as package; from anthropic_gateway import pricing;"
        "from anthropic_gateway.bedrock_models import model_table; here = Path(package.__file__).parent;"
        "print(here, pricing.resolve_model('claude-haiku-4-5', ''), model_table(None).bedrock_id('claude-haiku-4-5'),"
        "(here / 'ui' / 'index.html').is_file())"
    )
    installed = run(sys.executable, "-c", probe)
    assert installed.stdout.split() == [
        str(target / "anthropic_gateway"),  # the installed copy, not the checkout
        "claude-haiku-4-5",  # pricing.json is installed with it
        "anthropic.claude-haiku-4-5",  # bedrock_models.json too
        "True",  # and the console's files
    ], installed.stderr
