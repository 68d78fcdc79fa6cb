"""The acyclic import contract `lint-imports` runs (support/import_contracts.py), on small graphs built here."""

from __future__ import annotations

import grimp
import pytest
from importlinter.domain.helpers import MissingImport

from support.import_contracts import AcyclicContract


def graph(*imports: str) -> grimp.ImportGraph:
    built = grimp.ImportGraph()
    built.add_module("pkg")
    for line in imports:
        importer, imported = line.split(" -> ")
        built.add_import(importer=importer, imported=imported, line_number=1, line_contents="import")
    return built


def check(built: grimp.ImportGraph, *ignore: str) -> list[tuple[str, ...]]:
    options = {"packages": ["pkg"], **({"ignore_imports": list(ignore)} if ignore else {})}
    contract = AcyclicContract(name="acyclic", session_options={"root_packages": ["pkg"]}, contract_options=options)
    result = contract.check(built, verbose=False)
    assert result.kept == (not result.metadata["cycles"])
    return list(result.metadata["cycles"])


def test_layers_without_a_way_back_are_kept():
    assert check(graph("pkg.app -> pkg.routes", "pkg.routes -> pkg.settings", "pkg.app -> pkg.settings")) == []


def test_every_cycle_is_found_once_whatever_module_it_is_found_from():
    cycles = check(
        graph(
            "pkg.settings -> pkg.bedrock",
            "pkg.bedrock -> pkg.secrets",
            "pkg.secrets -> pkg.aws",
            "pkg.aws -> pkg.settings",
            "pkg.exchange -> pkg.batches",
            "pkg.batches -> pkg.exchange",
        )
    )
    assert cycles == [("pkg.aws", "pkg.settings", "pkg.bedrock", "pkg.secrets"), ("pkg.batches", "pkg.exchange")]


def test_cycles_through_subpackages_count():
    assert check(graph("pkg.storage.keys -> pkg.governance", "pkg.governance -> pkg.storage.keys")) != []


def test_an_ignored_import_breaks_its_cycle_and_must_still_exist():
    circle = ("pkg.settings -> pkg.bedrock", "pkg.bedrock -> pkg.settings")
    assert check(graph(*circle), "pkg.settings -> pkg.bedrock") == []
    with pytest.raises(MissingImport):
        check(graph("pkg.bedrock -> pkg.settings"), "pkg.settings -> pkg.bedrock")
