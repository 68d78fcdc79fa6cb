"""An import-linter contract type of our own: no import cycles inside a package (`lint-imports`, pyproject.toml).

import-linter 2.5 (the newest that installs beside aws-sam-cli, which pins click 8.1) has layers, independence,
forbidden and protected contracts, none of which refuses a cycle between modules of the same layer. This one does,
with grimp (import-linter's own graph library): a direct import `a -> b` is in a cycle when `b` leads back to `a`.
"""

from __future__ import annotations

from typing import Any, cast

from grimp import ImportGraph
from importlinter.application import contract_utils, output
from importlinter.application.contract_utils import AlertLevel
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class AcyclicContract(Contract):
    """No module of `packages` (at any depth) imports, directly or not, a module that imports it back.

    Configuration options:
        - packages:       The packages to check.
        - ignore_imports: Imports left out of the check (known cycles, each with the reason it is still there).
        - unmatched_ignore_imports_alerting: "none", "warn" or "error" (the default) for an ignored import that
                          no longer exists, so a cycle that went away takes its exception with it.
    """

    type_name = "acyclic"

    packages = fields.ListField(subfield=fields.StringField())
    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)
    unmatched_ignore_imports_alerting = fields.EnumField(AlertLevel, default=AlertLevel.ERROR)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        warnings = contract_utils.remove_ignored_imports(
            graph=graph,
            ignore_imports=cast(Any, self.ignore_imports),
            unmatched_alerting=cast(AlertLevel, self.unmatched_ignore_imports_alerting),
        )
        cycles: set[tuple[str, ...]] = set()
        for package in cast(list[str], self.packages):
            modules = {package, *graph.find_descendants(package)}
            for importer in sorted(modules):
                for imported in sorted(graph.find_modules_directly_imported_by(importer) & modules):
                    back = graph.find_shortest_chain(importer=imported, imported=importer)
                    if back is not None:
                        cycles.add(_rotated((importer, *back[:-1])))
        return ContractCheck(kept=not cycles, warnings=warnings, metadata={"cycles": sorted(cycles)})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for cycle in check.metadata["cycles"]:
            output.print_error(" -> ".join((*cycle, cycle[0])), bold=False)
            output.new_line()


def _rotated(cycle: tuple[str, ...]) -> tuple[str, ...]:
    """The cycle starting at its smallest module name: the same cycle found from each of its imports, once."""
    start = cycle.index(min(cycle))
    return cycle[start:] + cycle[:start]
