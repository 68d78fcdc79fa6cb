"""The `sam build` output is what runs: both doors, started from the build the way Lambda starts them.

One build per session (x86_64, into a temporary directory). `sam build` does not decide the template's conditions
(it builds every function, ManagedProxyFunction with the default ComputeMode too), so this one build is the build
of every combination of the stack's parameters; the built template is checked for each. Then:
  - the buffered door: the built ApiFunction handler invoked with every events/*.json, in a process that sees
    only the build and what the Lambda runtime ships (moto as AWS, the fake upstream as Anthropic);
  - the streaming door: the built run.sh started as the Web Adapter starts it, with the environment the built
    template gives it, a streamed message driven through it over HTTP, its first SSE event arriving while the
    upstream is still sending; and requests carrying the request context the adapter forwards from a Function
    URL or a REST API.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from samcli.yamlhelper import yaml_parse

from support import sam_artifact
from support.cfn_stack import COMBINATIONS, Stack, combination_id, references, translate
from support.servers import free_port
from support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
MASTER_KEY = "sk-master-test-0123456789abcdef"  # what tests/conftest.py stores in moto, and events/ send
SIZE_LIMIT_MB = 30
RESULT = "@@invoke-result@@ "
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}

# Invokes the built handler like the Lambda runtime does: one event per stdin line, the result on stdout
# behind a marker (the app's own stdout lines, logs and EMF metrics, come through unmarked).
_INVOKER = f"""
import json, sys
import handler

class Context:
    function_name = "ApiFunction"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    memory_limit_in_mb = 1024
    def get_remaining_time_in_millis(self):
        return 30000

for line in sys.stdin:
    result = handler.handler(json.loads(line), Context())
    sys.stdout.write({RESULT!r} + json.dumps(result) + "\\n")
    sys.stdout.flush()
"""


@pytest.fixture(scope="session")
def sam_build(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sam")
    build_dir = work / "build"
    result = sam_artifact.build(build_dir, work / "cache", "x86_64")
    assert result.returncode == 0, f"sam build failed:\n{result.stdout}\n{result.stderr}"
    return build_dir


@pytest.fixture(scope="session")
def support_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lambda-runtime")


# -- the build output ----------------------------------------------------------------------------------------------


def test_build_holds_the_pinned_layer_and_both_functions(sam_build):
    site = sam_build / sam_artifact.LAYER_ID / "python"
    assert (site / "anthropic_gateway" / "app.py").is_file()
    assert (site / "anthropic_gateway" / "pricing.json").is_file()
    assert (sam_build / sam_artifact.API_ID / "handler.py").is_file()
    run_sh = sam_build / sam_artifact.PROXY_ID / "run.sh"
    assert os.access(run_sh, os.X_OK), "the built run.sh lost its executable bit"
    installed = {p.name.split("-")[0].lower().replace("_", "-"): p.name for p in site.glob("*.dist-info")}
    for line in (ROOT / "layers" / "gateway" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            name = name.lower().replace("_", "-")
            assert name in installed, f"{name} is pinned but not in the layer"
            assert installed[name].removesuffix(".dist-info").endswith(f"-{version}"), installed[name]
    # boto3 comes with the Lambda runtime; bundling it would add ~25 MB to every deployment.
    assert not (site / "boto3").exists() and not (site / "botocore").exists()


def test_build_holds_both_streaming_functions_with_the_same_code(sam_build):
    """ComputeMode picks ProxyFunction or ManagedProxyFunction at deploy time: the build must hold both, alike."""
    on_demand, managed = (sam_build / name for name in ("ProxyFunction", "ManagedProxyFunction"))
    files = {path.relative_to(on_demand): path.read_bytes() for path in on_demand.rglob("*") if path.is_file()}
    assert files == {path.relative_to(managed): path.read_bytes() for path in managed.rglob("*") if path.is_file()}
    assert os.access(managed / "run.sh", os.X_OK)


@pytest.mark.parametrize("values", COMBINATIONS, ids=combination_id)
def test_built_template_deploys_every_combination(sam_build, values):
    """What `sam deploy` uploads: the built template, each local CodeUri a built directory; decided for every
    combination, every function and layer it deploys is in the build and nothing it names is missing."""
    built = yaml_parse((sam_build / "template.yaml").read_text())
    for name, resource in built["Resources"].items():
        uri = resource.get("Properties", {}).get("CodeUri") or resource.get("Properties", {}).get("ContentUri")
        if isinstance(uri, str):
            assert (sam_build / uri).is_dir(), f"{name}: {uri} is not in the build"
    stack = Stack(translate(built), values)
    if stack.refused:
        return  # CloudFormation refuses these before deploying anything (tests/test_deploy_template.py)
    for name, resource in [*stack.resources.items(), *stack.outputs.items()]:
        assert not references(resource) - set(stack.resources) - set(stack.parameters), name


def test_layer_ships_only_what_lambda_runs(sam_build):
    """The local runner and the key CLI are for workstations (`python -m anthropic_gateway ...` from a checkout)."""
    package = sam_build / sam_artifact.LAYER_ID / "python" / "anthropic_gateway"
    compiled = {p.name.split(".")[0] + ".py" for p in package.glob("__pycache__/*")}
    shipped = {p.name for p in package.iterdir()} | compiled
    assert {"app.py", "responses.py", "forwarding.py"} <= shipped
    assert not {"__main__.py", "cli.py", "login_cli.py", "local.py"} & shipped
    assert (ROOT / "layers" / "gateway" / "anthropic_gateway" / "local.py").is_file()  # still in the repo


def test_layer_fits_both_architectures_and_ships_bytecode(sam_build):
    site = sam_build / sam_artifact.LAYER_ID / "python"
    # Every compiled module (pydantic_core's, httptools') in both builds, so the layer fits either Architecture.
    shared_objects = {str(p.relative_to(site)) for p in site.rglob("*.so")}
    assert "pydantic_core/_pydantic_core.cpython-313-aarch64-linux-gnu.so" in shared_objects
    assert "httptools/parser/parser.cpython-313-aarch64-linux-gnu.so" in shared_objects
    by_module = {name.split(".cpython-313-")[0] for name in shared_objects}
    for module in by_module:
        assert {f"{module}.cpython-313-{arch}-linux-gnu.so" for arch in ("x86_64", "aarch64")} <= shared_objects
    # /opt is read-only on Lambda: without shipped bytecode every cold start compiles everything again.
    pyc = site / "anthropic_gateway" / "__pycache__" / "app.cpython-313.pyc"
    flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
    assert flags == 0b01, "bytecode must be hash-based and unchecked (valid whatever zipping does to mtimes)"
    sources = [p for p in site.rglob("*.py") if "__pycache__" not in p.parts]
    compiled = {p.parent.parent / p.name.split(".")[0] for p in site.rglob("__pycache__/*.cpython-313.pyc")}
    missing = [p for p in sources if p.with_suffix("") not in compiled]
    assert not missing, f"{len(missing)} modules ship without bytecode, e.g. {missing[:3]}"


def test_deployment_size_is_within_target(sam_build):
    parts = [sam_artifact.LAYER_ID, sam_artifact.PROXY_ID, sam_artifact.API_ID]
    total = sum(sam_artifact.tree_bytes(sam_build / part) for part in parts)
    assert total <= SIZE_LIMIT_MB * 1024 * 1024, f"{total / 1048576:.1f} MB unzipped"


# -- the buffered door: Mangum with every event --------------------------------------------------------------------


class BuiltApiFunction:
    """The built ApiFunction in its own process, invoked event by event (like `sam local invoke`, minus Docker)."""

    def __init__(self, build_dir: Path, support_dir: Path):
        env = sam_artifact.proxy_env(build_dir, support_dir, 0)
        env["PYTHONPATH"] = f"{build_dir / sam_artifact.API_ID}{os.pathsep}{env['PYTHONPATH']}"
        env["POWERTOOLS_METRICS_NAMESPACE"] = "AnthropicGateway"
        self.process = subprocess.Popen(
            ["python3", "-c", _INVOKER], env=env, cwd=build_dir / sam_artifact.API_ID, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def invoke(self, event: dict, timeout: float = 60) -> dict:
        self.process.stdin.write(json.dumps(event) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no result within {timeout} s; output so far: {self.output[-5:]}") from None
            if line.startswith(RESULT):
                return json.loads(line.removeprefix(RESULT))
            self.output.append(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)


@pytest.fixture(scope="module")
def api_function(aws, sam_build, support_dir):
    function = BuiltApiFunction(sam_build, support_dir)
    yield function
    function.close()


def _event(name: str, **headers: str) -> dict:
    event = json.loads((EVENTS / f"{name}.json").read_text())
    event["headers"].update(headers)
    return event


def test_health_event(api_function):
    result = api_function.invoke(_event("health"))
    assert result["statusCode"] == 200
    assert json.loads(result["body"]) == {"status": "ok"}


def test_key_generate_event(api_function):
    result = api_function.invoke(_event("key-generate"))
    assert result["statusCode"] == 200, result["body"]
    body = json.loads(result["body"])
    assert body["key"].startswith("sk-") and body["metadata"] == {"team": "platform"}


def test_key_generate_event_needs_the_master_key(api_function):
    result = api_function.invoke(_event("key-generate", authorization="Bearer sk-not-the-master-key-000000000000"))
    assert result["statusCode"] == 401
    assert json.loads(result["body"])["error"]["type"] == "authentication_error"


def test_console_event(api_function):
    result = api_function.invoke(_event("console"))
    assert result["statusCode"] == 200, result["body"]
    assert result["headers"]["content-type"] == "text/html; charset=utf-8"
    assert "frame-ancestors 'none'" in result["headers"]["content-security-policy"]
    assert '<script type="module" src="ui/app.js">' in result["body"]  # the layer ships the console's files


def test_messages_create_event(api_function, fake_upstream):
    result = api_function.invoke(_event("messages-create"))
    assert result["statusCode"] == 200, result["body"]
    assert result["headers"]["content-type"].startswith("application/json")
    message = json.loads(result["body"])
    assert message["type"] == "message" and message["model"] == "claude-sonnet-4-5"
    assert message["content"][0]["type"] == "text" and message["usage"]["output_tokens"] > 0
    assert fake_upstream.requests[-1].header("x-api-key") == fake_upstream.api_key  # the upstream key, not ours


def test_messages_stream_event(api_function):
    result = api_function.invoke(_event("messages-stream"))
    assert result["statusCode"] == 200, result["body"]
    assert result["headers"]["content-type"].startswith("text/event-stream")
    assert not result["isBase64Encoded"]
    events = re.findall(r"^event: (\w+)$", result["body"], re.MULTILINE)
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_delta" in events


def test_messages_event_with_a_virtual_key_is_accounted_before_the_invocation_returns(api_function):
    """Lambda freezes the process when the handler returns: the key's spend must already be written by then."""
    from anthropic_gateway import keys
    from anthropic_gateway.storage import key_records

    key = json.loads(api_function.invoke(_event("key-generate"))["body"])["key"]
    result = api_function.invoke(_event("messages-create", **{"x-api-key": key}))
    assert result["statusCode"] == 200, result["body"]
    record = key_records.load(keys.hash_key(key))  # straight from DynamoDB (moto), right after the invocation
    assert record.requests == 1 and record.output_tokens > 0 and record.spend > 0


def test_buffered_door_emits_the_dashboards_metrics(api_function):
    """The EMF lines the built function printed carry the namespace and names the dashboard reads."""
    from anthropic_gateway import metrics

    blobs = [json.loads(line) for line in api_function.output if line.startswith("{") and '"_aws"' in line]
    assert blobs, "no EMF metrics on stdout"
    for blob in blobs:
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "AnthropicGateway"
            assert {m["Name"] for m in directive["Metrics"]} <= set(metrics.METRIC_NAMES)
            assert all(dimensions[0] == "service" for dimensions in directive["Dimensions"])


# -- the streaming door: run.sh under the adapter's conditions -----------------------------------------------------


class _Proxy:
    """The built run.sh serving on `url`; `lines`: what it has written to stdout so far, line by line."""

    def __init__(self, url: str, process: subprocess.Popen) -> None:
        self.url, self.lines = url, []
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        for line in stream:  # until run.sh exits: a pipe that is read never fills
            self.lines.append(line.decode(errors="replace"))


@pytest.fixture(scope="module")
def proxy(aws, sam_build, support_dir):
    port = free_port()
    env = sam_artifact.proxy_env(sam_build, support_dir, port)
    process = sam_artifact.start_proxy(sam_build, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        sam_artifact.wait_healthy(f"http://127.0.0.1:{port}", process)
    except RuntimeError:
        sam_artifact.stop(process)
        raise AssertionError(process.stderr.read().decode(errors="replace")) from None
    yield _Proxy(f"http://127.0.0.1:{port}", process)
    sam_artifact.stop(process)
    process.stderr.close()


def test_built_run_sh_streams_events_as_the_upstream_sends_them(proxy):
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        delay_ms, chunks = 250, 6
        body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                "messages": [{"role": "user", "content": "Count slowly."}]}  # fmt: skip
        headers = {"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01",
                   "x-fake-delay-ms": str(delay_ms), "x-fake-chunks": str(chunks)}  # fmt: skip
        arrivals: list[tuple[float, str]] = []
        started = time.perf_counter()
        with http.stream("POST", "/anthropic/v1/messages", json=body, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            # Anthropic's Date and Server headers come through once: uvicorn adds none of its own.
            assert len(response.headers.get_list("date")) == 1 and "uvicorn" not in response.headers.get("server", "")
            for line in response.iter_lines():
                if line.startswith("event: "):
                    arrivals.append((time.perf_counter() - started, line.removeprefix("event: ")))
        finished = time.perf_counter() - started

    names = [name for _, name in arrivals]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("content_block_delta") == chunks
    # The upstream spaces its text deltas by delay_ms. Relayed as they come, they reach the client just as spread
    # out, and the first event long before the stream ends; a buffering door would deliver them all at the end.
    deltas = [at for at, name in arrivals if name == "content_block_delta"]
    assert deltas[-1] - deltas[0] >= 0.6 * (chunks - 1) * delay_ms / 1000, arrivals
    assert sum(later - earlier > delay_ms / 2000 for earlier, later in itertools.pairwise(deltas)) >= chunks // 2
    assert arrivals[0][0] <= finished - 0.8 * (chunks - 1) * delay_ms / 1000, arrivals


def test_built_run_sh_accounts_the_streamed_request(proxy):
    from anthropic_gateway import keys
    from anthropic_gateway.storage import key_records

    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        key = http.post("/key/generate", json={}, headers={"authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
        body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": True,
                "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
        with http.stream("POST", "/anthropic/v1/messages", json=body, headers={"x-api-key": key}) as response:
            assert response.status_code == 200
            response.read()

    def accounted() -> key_records.KeyRecord | None:  # by the run.sh process, after the response: poll its table
        record = key_records.load(keys.hash_key(key))
        return record if record is not None and record.requests else None

    record = eventually(accounted, timeout=10, interval=0.05, what="the streamed request accounted")
    assert record.requests == 1 and record.output_tokens > 0


def test_built_run_sh_ships_each_requests_lines_at_once(proxy):
    """Lambda ships what run.sh writes to stdout (a pipe: Python buffers it in blocks unless told otherwise) to
    CloudWatch Logs. A request's metrics and access line must leave the process when the request is accounted,
    not when 8 KB have piled up or the process exits: on a quiet function that can be hours."""
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        response = http.post("/anthropic/v1/messages", json=MESSAGE, headers={"x-api-key": MASTER_KEY})
    assert response.status_code == 200
    request_id = response.headers["x-gateway-request-id"]

    def shipped() -> list[dict] | None:
        records = [json.loads(line) for line in list(proxy.lines) if request_id in line]
        return records if any(record.get("message") == "gateway request" for record in records) else None

    records = eventually(shipped, timeout=10, interval=0.05, what=f"the lines of {request_id} on run.sh's stdout")
    assert any("_aws" in record for record in records)  # its EMF metrics too


@pytest.mark.parametrize(
    ("context", "door", "client_ip"),
    [
        ({"requestId": "fn-url-1", "domainName": "abc.lambda-url.us-east-1.on.aws",
          "http": {"method": "POST", "path": "/anthropic/v1/messages", "sourceIp": "203.0.113.7"}},
         "function_url", "203.0.113.7"),
        ({"requestId": "rest-1", "stage": "gateway", "path": "/gateway/anthropic/v1/messages",
          "identity": {"sourceIp": "198.51.100.23"}}, "rest_api", "198.51.100.23"),
    ],
)  # fmt: skip
def test_built_run_sh_logs_which_door_and_which_client(proxy, context, door, client_ip):
    """Behind the adapter, either front door: the access line names the door and the client's address from the
    request context the adapter forwards (x-amzn-request-context), not the adapter's loopback connection."""
    headers = {"x-api-key": MASTER_KEY, "x-amzn-request-context": json.dumps(context)}
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        response = http.post("/anthropic/v1/messages", json=MESSAGE, headers=headers)
    assert response.status_code == 200
    request_id = response.headers["x-gateway-request-id"]

    def access_line() -> dict | None:
        for line in list(proxy.lines):
            if request_id in line and '"gateway request"' in line:
                return json.loads(line)
        return None

    line = eventually(access_line, timeout=10, interval=0.05, what=f"the access line of {request_id}")
    assert (line["door"], line["client_ip"], line["edge_request_id"]) == (door, client_ip, context["requestId"])


def test_run_sh_gets_the_environment_the_template_gives_the_function(aws, sam_build, support_dir):
    """The simulation starts run.sh with what the template sets for ProxyFunction, the SnapStart hooks included,
    under the tests' own stand-ins for AWS and Anthropic."""
    env = sam_artifact.proxy_env(sam_build, support_dir, 8123)
    assert env["AWS_LWA_INVOKE_MODE"] == "response_stream" and env["UPSTREAM_READ_TIMEOUT"] == "840"
    assert env["AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH"].startswith("/")
    assert env["AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"].startswith("/")
    assert env["AWS_LWA_PORT"] == "8123" and env["ANTHROPIC_API_BASE"] == os.environ["ANTHROPIC_API_BASE"]


def test_python_shim_keeps_the_virtualenv_out(aws, sam_build, support_dir):
    """Guard for the two tests above: the built code runs without this environment's site-packages."""
    env = sam_artifact.proxy_env(sam_build, support_dir, 0)
    probe = "import sys, fastapi; print(fastapi.__file__); print(any('site-packages' in p for p in sys.path))"
    out = subprocess.run(["python3", "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    location, has_site_packages = out.split()
    assert location.startswith(str(sam_build)) and has_site_packages == "False"
