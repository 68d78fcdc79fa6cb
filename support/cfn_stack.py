"""What CloudFormation makes of the SAM-translated template.yaml for given parameter values, without AWS.

`Stack(translated, values)` decides the template's Rules, Conditions and every Fn::If for those values, as
CloudFormation does at deploy time: what is refused, and which resources and outputs exist with which properties.
The tests use it on every combination of the streaming door's parameters (`COMBINATIONS`), on template.yaml and on
the `sam build` output.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import boto3
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

Template = dict[str, Any]  # a template or a node of one, as parsed from YAML/JSON

_SUBNETS, _SECURITY_GROUPS = ["subnet-0a1b2c3d4e5f60718", "subnet-0f1e2d3c4b5a69788"], ["sg-0123456789abcdef0"]
DOMAIN = {
    "RestApiDomainName": "claude-gateway.example.com",
    "RestApiCertificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
    "RestApiWebAclArn": "arn:aws:wafv2:us-east-1:123456789012:regional/webacl/gateway/0f1e2d3c-4b5a-6978-8a9b",
}
COMBINATIONS = [
    {"StreamingDoor": door, "SnapStart": snapstart, "ComputeMode": compute,
     **({"SubnetIds": _SUBNETS, "SecurityGroupIds": _SECURITY_GROUPS} if compute == "ManagedInstances" else {}),
     **(DOMAIN if door != "FunctionUrl" and with_domain else {})}
    for door in ("FunctionUrl", "RestApi", "Both")
    for snapstart in ("false", "true")
    for compute in ("OnDemand", "ManagedInstances")
    for with_domain in ((False, True) if door == "RestApi" else (door == "Both",))
]  # fmt: skip


def combination_id(values: dict[str, object]) -> str:
    domain = "-domain" if "RestApiDomainName" in values else ""
    return f"{values['StreamingDoor']}-snapstart:{values['SnapStart']}-{values['ComputeMode']}{domain}"


_NO_VALUE = {"Ref": "AWS::NoValue"}


def translate(sam: Template, code_uri: str = "s3://bucket/key") -> Template:
    """The CloudFormation template SAM makes of `sam` (local CodeUri/ContentUri stand in as S3 URIs), in process."""
    sam = copy.deepcopy(sam)
    for resource in sam["Resources"].values():
        for uri in ("CodeUri", "ContentUri"):
            if isinstance(resource.get("Properties", {}).get(uri), str):
                resource["Properties"][uri] = code_uri
    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name="us-east-1"))
    translated: Template = translator.translate(sam, {}, get_managed_policy_map=lambda: {})
    return translated


class Stack:
    """What CloudFormation makes of the SAM-translated template for one set of parameter values: the Rules it
    refuses them with, and the resources and outputs that exist, every Fn::If already decided."""

    def __init__(self, translated: Template, values: dict[str, object]) -> None:
        self.parameters = {name: spec.get("Default") for name, spec in translated["Parameters"].items()}
        for name, spec in translated["Parameters"].items():
            if spec["Type"] == "CommaDelimitedList" and isinstance(self.parameters[name], str):
                self.parameters[name] = self.parameters[name].split(",")
        self.parameters.update(values)
        self._conditions = translated["Conditions"]
        self._parameter_specs = translated["Parameters"]
        self.refused = [
            assertion["AssertDescription"]
            for rule in translated.get("Rules", {}).values()
            if self.holds(rule.get("RuleCondition", True))
            for assertion in rule["Assertions"]
            if not self.holds(assertion["Assert"])
        ]
        self.resources = {name: self.decide(r) for name, r in translated["Resources"].items() if self.exists(r)}
        self.outputs = {name: self.decide(o) for name, o in translated["Outputs"].items() if self.exists(o)}

    def value(self, node: object) -> object:
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return self.parameters[node["Ref"]]
        return node

    def holds(self, node: object) -> bool:
        if isinstance(node, bool):
            return node
        assert isinstance(node, dict) and len(node) == 1, node
        ((function, argument),) = node.items()
        if function == "Condition":
            return self.holds(self._conditions[argument])
        if function == "Fn::Equals":
            return self.value(argument[0]) == self.value(argument[1])
        if function == "Fn::Contains":
            return self.value(argument[1]) in self.value(argument[0])  # type: ignore[operator]
        if function == "Fn::Not":
            return not self.holds(argument[0])
        if function == "Fn::And":
            return all(self.holds(part) for part in argument)
        if function == "Fn::Or":
            return any(self.holds(part) for part in argument)
        raise AssertionError(f"no evaluation for {function}")

    def exists(self, resource: Template) -> bool:
        return "Condition" not in resource or self.holds({"Condition": resource["Condition"]})

    def decide(self, node: object) -> object:
        if isinstance(node, dict):
            if set(node) == {"Fn::If"}:
                condition, yes, no = node["Fn::If"]
                return self.decide(yes if self.holds({"Condition": condition}) else no)
            decided = {key: self.decide(value) for key, value in node.items() if key != "Condition"}
            return {key: value for key, value in decided.items() if value != _NO_VALUE}
        if isinstance(node, list):
            return [item for item in (self.decide(value) for value in node) if item != _NO_VALUE]
        return node

    def template(self) -> Template:
        """A plain CloudFormation template of what exists, with the values as the parameters' defaults."""
        parameters = {
            name: {**spec, "Default": ",".join(value) if isinstance(value, list) else value}
            for name, spec in self._parameter_specs.items()
            for value in (self.parameters[name],)
        }
        return {"AWSTemplateFormatVersion": "2010-09-09", "Parameters": parameters, "Resources": self.resources,
                "Outputs": self.outputs}  # fmt: skip


def references(node: object) -> set[str]:
    """Logical ids and parameters a template fragment names (Ref, GetAtt, ${...} in Sub), pseudo parameters aside."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text, variables = (value, {}) if isinstance(value, str) else value
                names = {name.split(".")[0] for name in re.findall(r"\$\{([^!}][^}]*)\}", text)}
                found |= names - set(variables)
                found |= references(variables)
            else:
                found |= references(value)
    elif isinstance(node, list):
        for item in node:
            found |= references(item)
    return {name for name in found if not name.startswith("AWS::")}
