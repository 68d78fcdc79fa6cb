"""Build the SAM application and run its built streaming door the way Lambda does (tests and bench/).

On Lambda, the Web Adapter's wrapper runs the ProxyFunction's run.sh with the layer at /opt/python and the
runtime's own boto3 on the interpreter's path. Here, run.sh runs from the `sam build` output with:
  - `python3` resolving to this interpreter started with -S, so nothing from this virtualenv leaks in;
  - PYTHONPATH = the built layer, then a directory holding only what the Lambda Python runtime ships
    (boto3 and its dependencies), linked from this environment;
  - the environment the built template gives the function (its literal values, and parameters' defaults), under
    this process's own (the tests' moto and fake upstream stand in for AWS and Anthropic).
A module missing from the layer therefore fails here as it would on Lambda.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from samcli.yamlhelper import yaml_parse

from support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
LAYER_ID = "GatewayLayer"
PROXY_ID = "ProxyFunction"
API_ID = "ApiFunction"
# What the Lambda Python runtime provides next to the interpreter (its boto3 and the libraries boto3 needs).
RUNTIME_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")


def sam_executable() -> str:
    """`sam` from this interpreter's environment (the venv pins aws-sam-cli), else from PATH."""
    local = Path(sys.executable).parent / "sam"
    found = str(local) if local.exists() else shutil.which("sam")
    if not found:
        raise RuntimeError("sam (aws-sam-cli) is not installed: pip install -r requirements-dev.txt")
    return found


def sam_env() -> dict[str, str]:
    """`sam build` needs python3.13 on PATH: the one next to this interpreter comes first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SAM_CLI_TELEMETRY"] = "0"
    return env


def sam(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sam_executable(), *args], cwd=ROOT, env=sam_env(), capture_output=True, text=True, timeout=timeout
    )


def build(build_dir: Path, cache_dir: Path, architecture: str = "x86_64") -> subprocess.CompletedProcess[str]:
    """`sam build` of template.yaml into build_dir (the repo's .aws-sam is left alone)."""
    return sam(
        "build",
        "--build-dir", str(build_dir),
        "--cache-dir", str(cache_dir),
        "--parameter-overrides", f"Architecture={architecture}",
    )  # fmt: skip


def lambda_runtime_dir(where: Path) -> Path:
    """A directory with only the modules the Lambda Python runtime ships, linked from this environment."""
    where.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_MODULES:
        module = __import__(name)
        assert module.__file__ is not None  # a regular package, not a namespace one
        source = Path(module.__file__)
        source = source.parent if source.name == "__init__.py" else source
        target = where / source.name
        if not target.exists():
            target.symlink_to(source)
    return where


def python_shim_dir(where: Path) -> Path:
    """A PATH entry whose `python3` is this interpreter without site-packages (-S), like Lambda's bare runtime."""
    where.mkdir(parents=True, exist_ok=True)
    shim = where / "python3"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    shim.chmod(0o755)
    return where


def template_env(build_dir: Path, function: str = PROXY_ID) -> dict[str, str]:
    """The environment the built template gives `function` where it is known before deploying: literal values, and
    parameters' defaults (a resource's name or ARN, or a value chosen by a condition, exists only once deployed)."""
    template = yaml_parse((build_dir / "template.yaml").read_text())
    defaults = {name: spec.get("Default") for name, spec in template["Parameters"].items()}
    env: dict[str, str] = {}
    for scope in (template["Globals"]["Function"], template["Resources"][function]["Properties"]):
        for name, value in scope.get("Environment", {}).get("Variables", {}).items():
            if isinstance(value, dict) and set(value) == {"Ref"}:
                value = defaults.get(value["Ref"])
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                env[name] = str(value)
    return env


def proxy_env(build_dir: Path, support_dir: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment run.sh gets on Lambda, as far as it matters here."""
    env = template_env(build_dir)
    env |= {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV")) and k != "PATH"}
    env.update(
        PATH=f"{python_shim_dir(support_dir / 'bin')}{os.pathsep}/usr/bin:/bin",
        PYTHONPATH=f"{build_dir / LAYER_ID / 'python'}{os.pathsep}{lambda_runtime_dir(support_dir / 'runtime')}",
        PYTHONDONTWRITEBYTECODE="1",
        AWS_LWA_PORT=str(port),
        LAMBDA_TASK_ROOT=str(build_dir / PROXY_ID),
        POWERTOOLS_SERVICE_NAME="anthropic-gateway",
        AWS_REGION=os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
    )
    env.update(extra or {})
    return env


def start_proxy(build_dir: Path, env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start the built run.sh as the adapter's wrapper does (exec of $LAMBDA_TASK_ROOT/$_HANDLER)."""
    run_sh = build_dir / PROXY_ID / "run.sh"
    return subprocess.Popen([str(run_sh)], cwd=build_dir / PROXY_ID, env=env, **popen)


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30, interval: float = 0.002) -> float:
    """Poll GET /health like the adapter's readiness check; returns when it first answers 200."""
    with httpx.Client(timeout=1) as http:  # one client: bench/cold_start.py times this

        def ready() -> float | None:
            if process.poll() is not None:
                raise RuntimeError(f"run.sh exited with {process.returncode} before /health answered")
            try:
                return time.perf_counter() if http.get(url + "/health").status_code == 200 else None
            except httpx.TransportError:
                return None

        return eventually(ready, timeout=timeout, interval=interval, what=f"{url}/health answers")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def tree_bytes(path: Path) -> int:
    """Unzipped size: the sum of the files' sizes (what counts against Lambda's 250 MB limit)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
