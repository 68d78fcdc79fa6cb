"""template.yaml, samconfig.toml and events/ against each other and against the code they deploy.

Nothing here builds or calls AWS: `sam validate --lint` is cfn-lint, and the SAM transform runs in process.
Each test names what drifted, so a change on one side says what to change on the other.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import boto3
import pytest
from samcli.yamlhelper import yaml_parse

from support import sam_artifact
from support.cfn_stack import COMBINATIONS, DOMAIN, Stack, combination_id, references, translate
from support.servers import answers, free_port
from support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "layers" / "gateway" / "anthropic_gateway"
EVENTS = ROOT / "events"
MASTER_KEY = "sk-master-test-0123456789abcdef"  # tests/conftest.py stores it in moto; events/ use it


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml_parse((ROOT / "template.yaml").read_text())


@pytest.fixture(scope="module")
def resources(template) -> dict:
    return template["Resources"]


@pytest.fixture(scope="module")
def transformed(template) -> dict:
    """The CloudFormation template SAM deploys (local CodeUri/ContentUri stand in as S3 URIs)."""
    return translate(template)


@pytest.fixture(scope="module")
def global_env(template) -> dict:
    return template["Globals"]["Function"]["Environment"]["Variables"]


def _env_reads() -> dict[str, object]:
    """Every environment variable settings.py reads, with its default (the single place the code reads env)."""
    tree = ast.parse((PACKAGE / "settings.py").read_text())
    reads: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.args[0].value
            callee = ast.unparse(node.func)
            if isinstance(name, str) and name.isupper() and callee in ("env", "_float", "os.environ.get", "getenv"):
                default = node.args[1] if len(node.args) > 1 else None
                reads[name] = default.value if isinstance(default, ast.Constant) else None
    assert reads, "found no environment reads in settings.py"
    return reads


# -- lint ----------------------------------------------------------------------------------------------------------


def test_sam_validate_lint_is_clean():
    result = sam_artifact.sam("validate", "--lint", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_sections_are_in_the_documented_order(template):
    sections = ("Parameters", "Rules", "Conditions", "Globals", "Resources", "Outputs")
    order = [key for key in template if key in sections]
    assert order == list(sections)
    names = list(template["Resources"])
    assert names.index("GatewayTable") < names.index("GatewayLayer") < names.index("ProxyFunction")
    assert names.index("ApiFunction") < names.index("GatewayDashboard")


# -- data: the table and the secrets -------------------------------------------------------------------------------


def test_table_is_the_schema_the_code_uses(resources):
    from anthropic_gateway import local

    table = resources["GatewayTable"]["Properties"]
    for part in ("KeySchema", "GlobalSecondaryIndexes", "BillingMode"):
        assert table[part] == local.TABLE_SCHEMA[part], f"GatewayTable.{part} differs from local.TABLE_SCHEMA"
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(local.TABLE_SCHEMA["AttributeDefinitions"], key=str)
    assert table["TimeToLiveSpecification"] == {"AttributeName": local.TTL_ATTRIBUTE, "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["DeletionProtectionEnabled"] == {"Ref": "TableDeletionProtection"}
    assert resources["GatewayTable"]["UpdateReplacePolicy"] == "Retain"


def test_code_uses_the_declared_index_and_ttl_attribute(resources):
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))  # storage/ too
    for name in re.findall(r'"IndexName"\s*:\s*"([^"]+)"|IndexName\s*=\s*"([^"]+)"', source):
        index = "".join(name)
        assert index == "gsi1", f"the code queries index {index!r}, which template.yaml does not declare"
    ttl = resources["GatewayTable"]["Properties"]["TimeToLiveSpecification"]["AttributeName"]
    for name in re.findall(r'"#ttl"\s*:\s*"(\w+)"', source):
        assert name == ttl, f"the code expires items through {name!r}; the table's TTL attribute is {ttl!r}"


def test_secrets_are_what_the_code_expects(resources):
    upstream = resources["UpstreamKeySecret"]["Properties"]
    assert "SecretString" not in upstream and "GenerateSecretString" not in upstream  # set by the operator
    generated = resources["MasterKeySecret"]["Properties"]["GenerateSecretString"]
    # A plain string used verbatim as the master key: no JSON template, no key name.
    assert "SecretStringTemplate" not in generated and "GenerateStringKey" not in generated
    assert generated["PasswordLength"] >= 32 and generated["ExcludePunctuation"] is True


# -- environment ---------------------------------------------------------------------------------------------------


def test_globals_set_what_settings_reads(global_env):
    reads = _env_reads()
    must_set = {
        "ANTHROPIC_API_BASE", "GATEWAY_TABLE_NAME", "UPSTREAM_KEY_SECRET_NAME", "MASTER_KEY_SECRET_NAME",
        "SECRETS_MAX_AGE", "KEY_CACHE_TTL", "GATEWAY_PUBLIC_URL", "POWERTOOLS_METRICS_NAMESPACE",
    }  # fmt: skip
    assert must_set <= set(reads), f"settings.py no longer reads {sorted(must_set - set(reads))}"
    assert must_set <= set(global_env), f"template Globals miss {sorted(must_set - set(global_env))}"
    # Nothing set that nobody reads: Powertools' own settings and the sam-local-only endpoint aside.
    extra = {name for name in global_env if name not in reads and not name.startswith("POWERTOOLS_")}
    assert extra == {"AWS_ENDPOINT_URL"}, f"template sets variables nothing reads: {sorted(extra)}"
    assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_LOG_LEVEL"} <= set(global_env)


def test_environment_points_at_the_stack_resources(global_env, template):
    assert global_env["GATEWAY_TABLE_NAME"] == {"Ref": "GatewayTable"}
    assert global_env["UPSTREAM_KEY_SECRET_NAME"] == {"Ref": "UpstreamKeySecret"}
    assert global_env["MASTER_KEY_SECRET_NAME"] == {"Ref": "MasterKeySecret"}
    assert global_env["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    reads = _env_reads()
    assert template["Parameters"]["MetricsNamespace"]["Default"] == reads["POWERTOOLS_METRICS_NAMESPACE"]
    assert template["Parameters"]["AnthropicApiBase"]["Default"] == reads["ANTHROPIC_API_BASE"]
    # Deployed functions never get AWS_ENDPOINT_URL: only `sam local` runs set LocalAwsEndpointUrl.
    assert global_env["AWS_ENDPOINT_URL"] == {
        "Fn::If": ["UseLocalAwsEndpoint", {"Ref": "LocalAwsEndpointUrl"}, {"Ref": "AWS::NoValue"}]
    }
    assert template["Parameters"]["LocalAwsEndpointUrl"]["Default"] == ""


@pytest.mark.parametrize("function", ["ProxyFunction", "ManagedProxyFunction", "ApiFunction"])
def test_each_doors_upstream_waits_end_before_its_function_timeout(template, resources, function):
    """A silent upstream must get the gateway's own 504 (which settles the request and releases its holds), not
    Lambda's timeout (which kills the process with them held): each wait the gateway makes on the upstream before
    answering, plus a margin to answer and settle, fits in the function's Timeout."""
    properties = resources[function]["Properties"]
    timeout = properties.get("Timeout", template["Globals"]["Function"]["Timeout"])
    env = {
        **{name: default for name, default in _env_reads().items() if default is not None},
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **properties.get("Environment", {}).get("Variables", {}),
    }
    assert "UPSTREAM_READ_TIMEOUT" in properties["Environment"]["Variables"], "each door sets its own"
    # Before the first byte, one after the other: a free connection, a connect, sending the body, the headers.
    waits = ("UPSTREAM_POOL_TIMEOUT", "UPSTREAM_CONNECT_TIMEOUT", "UPSTREAM_WRITE_TIMEOUT", "UPSTREAM_READ_TIMEOUT")
    longest = {name: float(env[name]) for name in waits}
    assert sum(longest.values()) + 2 <= timeout, (function, longest, timeout)  # 2 s to answer 504 and settle


_BEDROCK_PARAMETERS = {
    "DEFAULT_UPSTREAMS": "DefaultUpstreams",
    "BEDROCK_BASE_URL": "BedrockBaseUrl",
    "BEDROCK_MODEL_IDS": "BedrockModelIds",
    "BEDROCK_API_KEY_SECRET_NAME": "BedrockApiKeySecretName",
    "BEDROCK_FAILOVER_ON_429": "BedrockFailoverOn429",
}


def test_bedrock_parameters_reach_both_functions_and_default_to_what_the_code_does(global_env, template, monkeypatch):
    from anthropic_gateway.settings import get_settings

    reads = _env_reads()
    for variable, parameter in _BEDROCK_PARAMETERS.items():
        assert variable in reads, f"settings.py no longer reads {variable}"
        assert global_env.get(variable) == {"Ref": parameter}, f"Globals: {variable} is not !Ref {parameter}"
    # The functions start with every default as the stack passes it (the stack region fills the base URL).
    defaults = {variable: template["Parameters"][p]["Default"] for variable, p in _BEDROCK_PARAMETERS.items()}
    for variable, value in defaults.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    get_settings.cache_clear()
    try:
        settings = get_settings()
    finally:
        get_settings.cache_clear()
    assert settings.default_upstreams == ("anthropic",) and defaults["DEFAULT_UPSTREAMS"] == reads["DEFAULT_UPSTREAMS"]
    assert settings.bedrock_base_url == "https://bedrock-mantle.eu-west-3.api.aws/anthropic"
    assert (settings.bedrock_api_key_secret, settings.bedrock_failover_on_429) == (None, False)
    allowed = template["Parameters"]["DefaultUpstreams"]["AllowedPattern"]
    for value in ("anthropic", "bedrock", "anthropic,bedrock", "bedrock,anthropic"):
        assert re.fullmatch(allowed, value), value


# -- IAM -----------------------------------------------------------------------------------------------------------

_DYNAMODB_CALLS = {
    "get_item": "GetItem", "put_item": "PutItem", "update_item": "UpdateItem", "delete_item": "DeleteItem",
    "query": "Query", "scan": "Scan", "batch_get_item": "BatchGetItem", "batch_write_item": "BatchWriteItem",
    "batch_writer": "BatchWriteItem", "transact_get_items": "GetItem",
}  # fmt: skip
# TransactWriteItems has no IAM action of its own: each part is authorized as the operation it performs.
_TRANSACT_PARTS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


def _dynamodb_actions_in_code() -> set[str]:
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))  # storage/ too
    actions = {_DYNAMODB_CALLS[call] for call in re.findall(r"\.(\w+)\(", source) if call in _DYNAMODB_CALLS}
    if ".transact_write_items(" in source:
        actions |= {action for part, action in _TRANSACT_PARTS.items() if re.search(rf'"{part}"\s*:', source)}
    return {f"dynamodb:{action}" for action in actions}


def _statements(transformed: dict) -> list[dict]:
    statements = []
    for resource in transformed["Resources"].values():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            statements += [s for p in properties.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
        elif resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            statements += properties["PolicyDocument"]["Statement"]
    return [granted for statement in statements for granted in _granted_if_set(statement)]


def _granted_if_set(statement: dict) -> list[dict]:
    """A statement, or the one a condition adds when a parameter is set (`!If [cond, statement, NoValue]`)."""
    if "Fn::If" not in statement:
        return [statement]
    return [branch for branch in statement["Fn::If"][1:] if branch != {"Ref": "AWS::NoValue"}]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_iam_grants_exactly_the_dynamodb_actions_the_code_uses(transformed):
    granted = {a for s in _statements(transformed) for a in _as_list(s["Action"]) if a.startswith("dynamodb:")}
    used = _dynamodb_actions_in_code()
    assert used, "found no DynamoDB calls in the package"
    assert used <= granted, f"the code calls DynamoDB actions the roles lack: {sorted(used - granted)}"
    assert granted <= used, f"the roles grant DynamoDB actions the code never uses: {sorted(granted - used)}"


# Bedrock's resources name models by pattern (anthropic.*) and bedrock-mantle's a project: the only wildcards.
_BEDROCK_RESOURCES = {
    "arn:${AWS::Partition}:bedrock-mantle:*:${AWS::AccountId}:project/*",
    "arn:${AWS::Partition}:bedrock:*::foundation-model/anthropic.*",
    "arn:${AWS::Partition}:bedrock:*:${AWS::AccountId}:inference-profile/*anthropic.*",
}


def test_iam_has_no_wildcards_and_no_broad_managed_policies(transformed):
    for statement in _statements(transformed):
        bedrock = all(a.startswith(("bedrock:", "bedrock-mantle:")) for a in _as_list(statement["Action"]))
        for field in ("Action", "Resource"):
            for value in _as_list(statement[field]):
                if bedrock and field == "Resource" and value.get("Fn::Sub") in _BEDROCK_RESOURCES:
                    continue
                assert "*" not in json.dumps(value), f"wildcard in {field}: {statement}"
    operator_role = transformed["Resources"]["GatewayCapacityProvider"]["Properties"]["PermissionsConfig"]
    for name, resource in transformed["Resources"].items():
        if resource["Type"] == "AWS::IAM::Role":
            for arn in resource["Properties"].get("ManagedPolicyArns", []):
                if operator_role["CapacityProviderOperatorRoleArn"] == {"Fn::GetAtt": [name, "Arn"]}:
                    # The role Lambda runs Managed Instances' EC2 capacity with: AWS's policy for that, nothing else.
                    assert arn == "arn:aws:iam::aws:policy/AWSLambdaManagedEC2ResourceOperator", arn
                else:
                    assert arn == {"Ref": "GatewayDataAccessPolicy"}, f"{name} attaches {arn}"


def test_iam_scopes_data_access_to_the_table_and_the_two_secrets(resources):
    statements = resources["GatewayDataAccessPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for statement in statements for s in _granted_if_set(statement)}
    assert by_sid["KeysAndCounters"]["Resource"] == [
        {"Fn::GetAtt": ["GatewayTable", "Arn"]},
        {"Fn::Sub": "${GatewayTable.Arn}/index/gsi1"},
    ]
    assert by_sid["ReadOwnSecrets"]["Action"] == "secretsmanager:GetSecretValue"
    assert by_sid["ReadOwnSecrets"]["Resource"] == [{"Ref": "UpstreamKeySecret"}, {"Ref": "MasterKeySecret"}]
    for function, log_group in (
        ("ProxyFunction", "ProxyLogGroup"),
        ("ManagedProxyFunction", "ProxyLogGroup"),
        ("ApiFunction", "ApiLogGroup"),
    ):
        props = resources[function]["Properties"]
        role = resources[props["Role"]["Fn::GetAtt"][0]]["Properties"]
        assert role["Policies"][0]["PolicyDocument"]["Statement"][0]["Resource"] == {"Fn::GetAtt": [log_group, "Arn"]}
        assert props["LoggingConfig"]["LogGroup"] == {"Ref": log_group}
        assert resources[log_group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_iam_grants_bedrock_inference_for_anthropic_models_only(resources):
    statements = resources["GatewayDataAccessPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for statement in statements for s in _granted_if_set(statement)}
    assert by_sid["BedrockMantleInference"]["Action"] == "bedrock-mantle:CreateInference"
    assert by_sid["BedrockInvokeAnthropicModels"]["Action"] == [
        "bedrock:InvokeModel",
        "bedrock:InvokeModelWithResponseStream",
    ]
    granted = [r["Fn::Sub"] for sid in ("BedrockMantleInference", "BedrockInvokeAnthropicModels")
               for r in _as_list(by_sid[sid]["Resource"])]  # fmt: skip
    assert set(granted) == _BEDROCK_RESOURCES
    assert all("anthropic." in arn for arn in granted if ":bedrock:" in arn)
    # The Bedrock API key secret is readable only when one is configured, and only that one.
    conditional = [s["Fn::If"] for s in statements if "Fn::If" in s]
    assert ["HasBedrockApiKeySecret", by_sid["ReadBedrockApiKey"], {"Ref": "AWS::NoValue"}] in conditional
    assert by_sid["ReadBedrockApiKey"]["Action"] == "secretsmanager:GetSecretValue"
    assert "secret:${BedrockApiKeySecretName}-??????" in by_sid["ReadBedrockApiKey"]["Resource"]["Fn::Sub"]


# -- the two doors -------------------------------------------------------------------------------------------------


STREAMING_FUNCTIONS = ("ProxyFunction", "ManagedProxyFunction")  # on demand, on Managed Instances (ComputeMode)
ADAPTER_LAYER = "${AdapterLayer}:${LambdaWebAdapterVersion}"


def test_streaming_door_is_wired_for_the_web_adapter(template, resources):
    for function in STREAMING_FUNCTIONS:
        props = resources[function]["Properties"]
        env = props["Environment"]["Variables"]
        assert props["Handler"] == "run.sh" and props["Timeout"] == 900
        assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
        assert env["AWS_LWA_INVOKE_MODE"] == "response_stream"
        # Clients reach a published version: SnapStart and Managed Instances run nothing else.
        assert props["AutoPublishAlias"] == "live" and props["AutoPublishAliasAllProperties"] is True
        adapter = props["Layers"][1]["Fn::Sub"]
        assert adapter[0] == f"arn:aws:lambda:${{AWS::Region}}:753240598075:layer:{ADAPTER_LAYER}"
        assert adapter[1]["AdapterLayer"] == {"Fn::If": ["IsArm64", "LambdaAdapterLayerArm64", "LambdaAdapterLayerX86"]}
    # Layer 30 is the adapter's v1.1.0, the first that calls SnapStart hooks (v1.0.0 brought Managed Instances).
    version = template["Parameters"]["LambdaWebAdapterVersion"]
    assert version["Default"] >= 30 and version["MinValue"] >= 30


def test_the_two_streaming_functions_differ_only_in_where_they_run(resources):
    """ComputeMode swaps one function for the other: whatever serves a stream must not depend on which runs."""
    on_demand, managed = (dict(resources[name]["Properties"]) for name in STREAMING_FUNCTIONS)
    hooks = {"AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH", "AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"}
    on_demand_env = on_demand.pop("Environment")["Variables"]
    assert {k: v for k, v in on_demand_env.items() if k not in hooks} == managed.pop("Environment")["Variables"]
    assert on_demand.pop("SnapStart") == {"ApplyOn": {"Fn::If": ["UseSnapStart", "PublishedVersions", "None"]}}
    assert managed.pop("CapacityProviderConfig") == {
        "Arn": {"Fn::GetAtt": ["GatewayCapacityProvider", "Arn"]},
        "PerExecutionEnvironmentMaxConcurrency": {"Ref": "MaxConcurrencyPerEnvironment"},
        "ExecutionEnvironmentMemoryGiBPerVCpu": 2,
    }
    # Managed Instances' smallest environment; at 2 GB per vCPU, the one vCPU a uvicorn process can use.
    assert managed.pop("MemorySize") == 2048
    on_demand.pop("Description"), managed.pop("Description")
    assert on_demand == managed


def test_snapstart_hooks_are_paths_the_adapter_accepts(resources):
    """The adapter refuses, at start, hook paths it cannot guard (a `%` once decoded, the root, its pass-through
    path /events), and answers 403 to outside requests for the ones it accepts."""
    env = resources["ProxyFunction"]["Properties"]["Environment"]["Variables"]
    paths = [env["AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH"], env["AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"]]
    for path in paths:
        assert re.fullmatch(r"(/[a-z0-9_-]+)+", path), path
        assert path != "/events" and not path.startswith(("/anthropic/", "/key/", "/spend/", "/ui"))
    assert len(set(paths)) == 2
    # ... and the paths the gateway serves its hooks on (to the adapter only: tests/test_snapstart.py).
    from anthropic_gateway.app import AFTER_RESTORE_PATH, BEFORE_CHECKPOINT_PATH

    assert paths == [BEFORE_CHECKPOINT_PATH, AFTER_RESTORE_PATH]


def test_a_new_gateway_layer_publishes_a_new_streaming_version(template):
    """The gateway's code ships in the layer, not in the functions' CodeUri: a layer change must move the `live`
    alias to a new version, or the streaming door keeps serving the old code."""

    def versions(layer_uri: str) -> set[str]:
        sam = copy.deepcopy(template)
        sam["Resources"]["GatewayLayer"]["Properties"]["ContentUri"] = {"Bucket": "bucket", "Key": layer_uri}
        translated = translate(sam, code_uri="s3://bucket/code")
        return {name for name, r in translated["Resources"].items() if r["Type"] == "AWS::Lambda::Version"}

    before, after = versions("layer-1.zip"), versions("layer-2.zip")
    assert len(before) == len(after) == 2
    assert not before & after, "a new layer left a streaming function's published version unchanged"


def test_readiness_check_path_answers_without_auth(resources):
    from fastapi.testclient import TestClient

    from anthropic_gateway.app import app

    path = resources["ProxyFunction"]["Properties"]["Environment"]["Variables"]["AWS_LWA_READINESS_CHECK_PATH"]
    with TestClient(app) as client:
        response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"


def test_run_sh_starts_the_app_on_the_adapters_port():
    run_sh = ROOT / "functions" / "proxy" / "run.sh"
    assert run_sh.stat().st_mode & stat.S_IXUSR, "run.sh must be executable (git keeps the mode)"
    text = run_sh.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert "\r" not in text, "run.sh needs LF line endings"
    assert "exec python3 -c 'import gc, sys; gc.disable(); from uvicorn.main import main" in text
    assert "anthropic_gateway.app:app" in text
    assert '--port "${AWS_LWA_PORT:-${PORT:-8080}}"' in text and "/opt/python" in text


def _route_paths(routes, prefix: str = ""):
    """Every path the app serves, through included routers (FastAPI keeps those as their own route objects)."""
    for route in routes:
        if hasattr(route, "original_router"):
            yield from _route_paths(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "path"):
            yield prefix + route.path


def _reachable(path: str, api_paths: list[str]) -> bool:
    for api_path in api_paths:
        if api_path.endswith("/{proxy+}"):
            prefix = api_path.removesuffix("{proxy+}")
            if path.startswith(prefix) and len(path) > len(prefix):
                return True
        elif api_path == path:
            return True
    return False


def test_every_app_route_is_reachable_through_the_http_api(resources):
    from anthropic_gateway import admin
    from anthropic_gateway.app import GatewayApp

    api_paths = [
        event["Properties"]["Path"]
        for event in resources["ApiFunction"]["Properties"]["Events"].values()
        if event["Type"] == "HttpApi"
    ]

    app_paths = [*_route_paths(admin.build(None).routes), *GatewayApp.OWN_PATHS]  # the admin app loads on first use
    assert "/health" in app_paths and "/anthropic/{path:path}" in app_paths
    missing = [path for path in app_paths if not _reachable(path, api_paths)]
    assert not missing, f"app routes without an HttpApi route in template.yaml: {missing}"
    for api_path in api_paths:
        prefix = api_path.removesuffix("{proxy+}")
        assert any(path.startswith(prefix) for path in app_paths), f"HttpApi route {api_path} serves no app route"


def test_every_app_route_is_reachable_through_the_rest_api(resources):
    """The REST API door serves what the Function URL serves: the pass-through, the admin API, /ui and /health."""
    from anthropic_gateway import admin
    from anthropic_gateway.app import GatewayApp

    properties = resources["RestApi"]["Properties"]
    # Its integrations name the function through !If, which SAM's change detection does not see: without a new
    # deployment on every update, switching ComputeMode would leave the stage calling the deleted function.
    assert properties["AlwaysDeploy"] is True
    api_paths = list(properties["DefinitionBody"]["paths"])
    app_paths = [*_route_paths(admin.build(None).routes), *GatewayApp.OWN_PATHS]  # the admin app loads on first use
    missing = [path for path in app_paths if not _reachable(path, api_paths)]
    assert not missing, f"app routes without a REST API route in template.yaml: {missing}"
    for api_path in api_paths:
        prefix = api_path.removesuffix("{proxy+}")
        assert any(path.startswith(prefix) for path in app_paths), f"REST API route {api_path} serves no app route"


def test_api_handler_is_mangum_over_the_shared_app():
    source = (ROOT / "functions" / "api" / "handler.py").read_text()
    assert "from anthropic_gateway.app import app" in source
    assert 'Mangum(app, lifespan="off")' in source
    assert "run_until_complete(app.start())" in source  # the runtime is built and warmed at init
    assert "run_until_complete(app.drain())" in source  # accounting finishes before Lambda freezes the process


# -- every combination of the streaming door's parameters ---------------------------------------------------------


def _running_alias(stack: Stack) -> dict:
    function = "ProxyFunction" if stack.parameters["ComputeMode"] == "OnDemand" else "ManagedProxyFunction"
    return {"Ref": f"{function}Aliaslive"}


@pytest.mark.parametrize("values", COMBINATIONS, ids=combination_id)
def test_every_combination_is_a_whole_stack_or_refused_by_a_rule(transformed, values):
    stack = Stack(transformed, values)
    if values["SnapStart"] == "true" and values["ComputeMode"] == "ManagedInstances":
        assert stack.refused == ["SnapStart=true needs ComputeMode=OnDemand (Managed Instances do not use SnapStart)."]
        return
    assert stack.refused == []
    resources, outputs = stack.resources, stack.outputs
    # Everything named exists: a resource left out by a condition is never referred to.
    for name, resource in [*resources.items(), *outputs.items()]:
        dangling = references(resource) - set(resources) - set(stack.parameters)
        assert not dangling, f"{name} refers to {sorted(dangling)}, which does not exist here"
        for dependency in _as_list(resource.get("DependsOn", [])):
            assert dependency in resources, f"{name} depends on {dependency}"

    on_demand = values["ComputeMode"] == "OnDemand"
    functions = {name for name, r in resources.items() if r["Type"] == "AWS::Lambda::Function"}
    assert functions == {"ApiFunction", "ProxyFunction" if on_demand else "ManagedProxyFunction"}
    assert ("GatewayCapacityProvider" in resources) is not on_demand
    if on_demand:
        snapstart = resources["ProxyFunction"]["Properties"]["SnapStart"]["ApplyOn"]
        assert snapstart == ("PublishedVersions" if values["SnapStart"] == "true" else "None")

    alias = _running_alias(stack)
    door = values["StreamingDoor"]
    assert ("ProxyFunctionUrl" in resources) is (door != "RestApi") is ("StreamingUrl" in outputs)
    assert ("RestApi" in resources) is (door != "FunctionUrl") is ("RestApiUrl" in outputs)
    if door != "RestApi":  # the URL and both its permissions are on the alias clients reach
        assert resources["ProxyFunctionUrl"]["Properties"]["TargetFunctionArn"] == alias
        for permission in ("ProxyFunctionUrlPublicAccess", "ProxyFunctionUrlInvokeAccess"):
            assert resources[permission]["Properties"]["FunctionName"] == alias
    else:  # nothing public but the REST API, so nothing gets past its WAF
        assert not [r for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"
                    and r["Properties"]["Principal"] == "*"]  # fmt: skip
    if door != "FunctionUrl":
        assert resources["RestApiInvokeAccess"]["Properties"]["FunctionName"] == alias
        paths = resources["RestApi"]["Properties"]["Body"]["paths"]
        for path, methods in paths.items():
            for integration in (m["x-amazon-apigateway-integration"] for m in methods.values()):
                assert (integration["type"], integration["responseTransferMode"]) == ("aws_proxy", "STREAM"), path
                assert integration["timeoutInMillis"] == 900_000  # a stream's 15 minutes
                uri, variables = integration["uri"]["Fn::Sub"]
                assert uri.endswith(":lambda:path/2021-11-15/functions/${Alias}/response-streaming-invocations")
                assert variables == {"Alias": alias}, path
        assert resources["RestApi"]["Properties"]["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    with_domain = "RestApiDomainName" in values
    assert ("RestApiDomain" in resources) is ("RestApiDomainMapping" in resources) is with_domain
    assert ("RestApiWebAcl" in resources) is with_domain
    assert "AnthropicBaseUrl" in outputs


def test_parameters_that_cannot_work_together_are_refused(transformed):
    refused = {
        "ManagedInstances without a VPC": {"ComputeMode": "ManagedInstances"},
        "a domain without a certificate": {"StreamingDoor": "RestApi", "RestApiDomainName": "gw.example.com"},
        "a domain without a REST API": {**DOMAIN, "StreamingDoor": "FunctionUrl"},
        "a WAF without a REST API": {"RestApiWebAclArn": DOMAIN["RestApiWebAclArn"]},
    }
    for what, values in refused.items():
        assert Stack(transformed, values).refused, what


@pytest.mark.parametrize("values", COMBINATIONS, ids=combination_id)
def test_every_combination_passes_cfn_lint(transformed, values):
    """`sam validate --lint` lints the template before its conditions are decided; this lints what CloudFormation
    deploys for each combination, decided: cfn-lint's own checks, with every value resolved."""
    from cfnlint.api import ManualArgs, lint

    stack = Stack(transformed, values)
    if stack.refused:
        return
    # W2001: parameters that only decided conditions are unused once the conditions are decided.
    matches = lint(json.dumps(stack.template()), config=ManualArgs(regions=["us-east-1"], ignore_checks=["W2001"]))
    assert not matches, [str(match) for match in matches]


# -- observability -------------------------------------------------------------------------------------------------


# Whichever streaming function ComputeMode runs: the dashboard's and the alarms' name for it.
_STREAMING_FUNCTION = {"Fn::If": ["OnManagedInstances", {"Ref": "ManagedProxyFunction"}, {"Ref": "ProxyFunction"}]}


def _dashboard_body(resources) -> str:
    body, variables = resources["GatewayDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert variables == {"StreamingFunction": _STREAMING_FUNCTION}
    return body


def _dashboard(resources) -> dict:
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: f"<{m.group(1)}>", _dashboard_body(resources)))


def _searches(dashboard: dict) -> list[tuple[tuple[str, ...], str, str]]:
    """(dimension set, metric name, statistic) of every SEARCH over the app's namespace."""
    found = []
    for widget in dashboard["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            for item in row:
                if isinstance(item, dict) and "expression" in item:
                    match = re.fullmatch(
                        r"SEARCH\('\{<MetricsNamespace>,([^}]+)\} MetricName=\"(\w+)\"', '(\w+)', \d+\)",
                        item["expression"],
                    )
                    assert match, f"unexpected dashboard expression {item['expression']}"
                    dimensions = tuple(sorted(match.group(1).split(",")))
                    found.append((dimensions, match.group(2), match.group(3)))
    return found


def test_dashboard_shows_every_metric_the_code_emits(resources):
    from anthropic_gateway import metrics

    searches = _searches(_dashboard(resources))
    shown = {name for _, name, _ in searches}
    assert shown == set(metrics.METRIC_NAMES), (
        f"dashboard lacks {sorted(set(metrics.METRIC_NAMES) - shown)}; "
        f"shows metrics the code does not emit: {sorted(shown - set(metrics.METRIC_NAMES))}"
    )
    emitted_sets = {tuple(sorted(s)) for s in metrics.DIMENSION_SETS}
    for dimensions, name, _ in searches:
        assert dimensions in emitted_sets, f"{name}: the code emits no dimension set {dimensions}"
        if dimensions == ("StatusClass", "service"):
            assert name in metrics.STATUS_METRICS
    used_sets = {dimensions for dimensions, _, _ in searches}
    assert {("Tag", "service"), ("Model", "service"), ("service",)} <= used_sets
    percentiles = {(name, stat) for _, name, stat in searches if stat.startswith("p")}
    assert {
        ("Latency", "p50"),
        ("Latency", "p99"),
        ("TimeToFirstByte", "p50"),
        ("TimeToFirstByte", "p99"),
    } <= percentiles


def test_dashboard_and_alarms_watch_both_doors(template, resources):
    body = _dashboard_body(resources)
    for needle in (
        '"Url5xxCount", "FunctionName", "${StreamingFunction}"',
        '"Throttles", "FunctionName", "${ApiFunction}"',
        '"Duration", "FunctionName", "${StreamingFunction}"',
        '"5xx", "ApiId", "${HttpApi}"',
    ):
        assert needle in body
    assert "${ProxyFunction}" not in body, "the dashboard would show nothing with ComputeMode=ManagedInstances"
    alarms = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    watched = set()
    for props in alarms.values():
        stats = [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        stats += (
            [{"MetricName": props["MetricName"], "Dimensions": props["Dimensions"]}] if "MetricName" in props else []
        )
        watched |= {(s["MetricName"], json.dumps(s["Dimensions"][0]["Value"])) for s in stats}
    for function in (_STREAMING_FUNCTION, {"Ref": "ApiFunction"}):
        ref = json.dumps(function)
        assert {("Errors", ref), ("Throttles", ref), ("Duration", ref)} <= watched, function
    assert ("Url5xxCount", json.dumps(_STREAMING_FUNCTION)) in watched
    assert ("5xx", json.dumps({"Ref": "HttpApi"})) in watched
    assert ("5XXError", json.dumps({"Fn::Sub": "${AWS::StackName}-streaming"})) in watched  # the REST API door
    assert resources["RestApi"]["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-streaming"}
    # Each door's alarm exists when its door does.
    assert resources["ProxyUrl5xxRateAlarm"]["Condition"] == "HasFunctionUrl"
    assert resources["RestApi5xxRateAlarm"]["Condition"] == "HasRestApi"
    for function, alarm in (
        ("ProxyFunction", "ProxyDurationNearTimeoutAlarm"),
        ("ApiFunction", "ApiDurationNearTimeoutAlarm"),
    ):
        timeout = resources[function]["Properties"].get("Timeout", template["Globals"]["Function"]["Timeout"])
        assert alarms[alarm]["Threshold"] == 0.9 * timeout * 1000, f"{alarm}: not 90% of {function}'s timeout"


def test_outputs_give_both_urls_the_secrets_and_the_table(template):
    outputs = template["Outputs"]
    assert outputs["StreamingUrl"]["Value"] == {"Fn::GetAtt": ["ProxyFunctionUrl", "FunctionUrl"]}
    # The Function URL when there is one (the default door), else the REST API (its domain when it has one).
    by_door = outputs["AnthropicBaseUrl"]["Value"]["Fn::If"]
    assert by_door[:2] == ["HasFunctionUrl", {"Fn::Sub": "${ProxyFunctionUrl.FunctionUrl}anthropic"}]
    assert by_door[2]["Fn::If"][1:] == [
        {"Fn::Sub": "https://${RestApiDomainName}/anthropic"},
        {"Fn::Sub": "https://${RestApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${RestApi.Stage}/anthropic"},
    ]
    assert outputs["UpstreamKeySecretArn"]["Value"] == {"Ref": "UpstreamKeySecret"}
    assert outputs["MasterKeySecretArn"]["Value"] == {"Ref": "MasterKeySecret"}
    assert outputs["TableName"]["Value"] == {"Ref": "GatewayTable"}
    assert "HttpApi" in outputs["ApiUrl"]["Value"]["Fn::Sub"]


# -- samconfig.toml and events/ ------------------------------------------------------------------------------------


def test_samconfig_deploys_the_template_parameters(template):
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())["default"]
    deploy = config["deploy"]["parameters"]
    assert config["global"]["parameters"]["stack_name"] and config["global"]["parameters"]["region"]
    assert deploy["capabilities"] == "CAPABILITY_IAM" and deploy["resolve_s3"] is True
    assert deploy["confirm_changeset"] is True
    overrides = dict(pair.split("=", 1) for pair in deploy["parameter_overrides"].split())
    assert set(overrides) <= set(template["Parameters"]), "samconfig overrides unknown template parameters"
    assert config["local_start_api"]["parameters"]["env_vars"] == "events/env.json"


def test_every_template_parameter_is_documented_where_deployers_look(template):
    """docs/deploy.md's parameter table and samconfig.toml's comments name every parameter the stack takes."""
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    samconfig = (ROOT / "samconfig.toml").read_text()
    for name in template["Parameters"]:
        assert f"`{name}`" in deploy_doc, f"docs/deploy.md does not describe the parameter {name}"
        assert re.search(rf"^#.*\b{name}\b", samconfig, re.MULTILINE), f"samconfig.toml's comments omit {name}"


def test_env_json_only_sets_variables_the_template_declares(template, resources):
    """`sam local` ignores env.json entries for variables the template does not declare."""
    env = json.loads((EVENTS / "env.json").read_text())
    declared = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for scope, variables in env.items():
        own = resources.get(scope, {}).get("Properties", {}).get("Environment", {}).get("Variables", {})
        assert set(variables) <= declared | set(own), f"{scope}: not declared {sorted(set(variables) - declared)}"
    local = env["Parameters"]
    assert local["AWS_ENDPOINT_URL"].startswith("http://")
    reads = _env_reads()
    for name in ("GATEWAY_TABLE_NAME", "UPSTREAM_KEY_SECRET_NAME", "MASTER_KEY_SECRET_NAME"):
        assert local[name] == reads[name], f"env.json {name} differs from what `make dev` and seed_moto.py create"


def test_events_are_http_api_v2_payloads_for_declared_routes(resources):
    routes = {
        f"{e['Properties']['Method'].upper()} {e['Properties']['Path']}"
        for e in resources["ApiFunction"]["Properties"]["Events"].values()
    }
    names = sorted(p.name for p in EVENTS.glob("*.json") if p.name != "env.json")
    assert {"health.json", "key-generate.json", "messages-create.json", "messages-stream.json"} <= set(names)
    for name in names:
        event = json.loads((EVENTS / name).read_text())
        assert event["version"] == "2.0" and event["routeKey"] == event["requestContext"]["routeKey"]
        assert event["routeKey"] in routes, f"{name}: {event['routeKey']} is not a route of HttpApi"
        assert event["rawPath"] == event["requestContext"]["http"]["path"]
        if "body" in event:
            json.loads(event["body"])
            assert event["headers"]["content-length"] == str(len(event["body"]))
        credentials = [v for k, v in event["headers"].items() if k in ("authorization", "x-api-key")]
        assert all(v.removeprefix("Bearer ") == MASTER_KEY for v in credentials), name


def test_seed_script_prepares_moto_for_sam_local(tmp_path):
    """events/seed_moto.py against `anthropic-gateway moto` as docs/deploy.md runs them: the table, and the secrets
    env.json names. That moto behaves as make dev's does (local.behave_like_dynamodb): a counter of $0.0000001
    steps keeps adding (a plain moto_server writes 2E-7, then cannot read it back)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "anthropic_gateway", "moto", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: answers(endpoint + "/moto-api/", status=None), timeout=30, interval=0.1, what="moto up")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GATEWAY_", "UPSTREAM_", "MASTER_"))}
        env |= {"ANTHROPIC_API_KEY": "sk-ant-seeded", "AWS_DEFAULT_REGION": "us-east-1"}
        seeded = subprocess.run(
            [sys.executable, str(EVENTS / "seed_moto.py"), "--endpoint", endpoint],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert seeded.returncode == 0, seeded.stderr
        names = json.loads((EVENTS / "env.json").read_text())["Parameters"]
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        dynamodb = session.client("dynamodb", endpoint_url=endpoint)
        table = dynamodb.describe_table(TableName=names["GATEWAY_TABLE_NAME"])["Table"]
        assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == ["gsi1"]
        secrets = session.client("secretsmanager", endpoint_url=endpoint)
        master = secrets.get_secret_value(SecretId=names["MASTER_KEY_SECRET_NAME"])["SecretString"]
        upstream = secrets.get_secret_value(SecretId=names["UPSTREAM_KEY_SECRET_NAME"])["SecretString"]
        assert (master, upstream) == (MASTER_KEY, "sk-ant-seeded")

        counter = {"pk": {"S": "seed-test"}, "sk": {"S": "COUNTER"}}
        for _ in range(3):
            dynamodb.update_item(
                TableName=names["GATEWAY_TABLE_NAME"],
                Key=counter,
                UpdateExpression="ADD spend :step",
                ExpressionAttributeValues={":step": {"N": "0.0000001"}},
            )
        item = dynamodb.get_item(TableName=names["GATEWAY_TABLE_NAME"], Key=counter)["Item"]
        assert item["spend"]["N"] == "0.0000003"
    finally:
        server.terminate()
        server.wait(10)
