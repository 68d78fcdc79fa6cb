"""`python -m anthropic_gateway serve` runs the gateway locally; `... keys <command>` manages keys.

`anthropic-gateway serve | keys ...` is the same command, as the console script the package installs
(pyproject.toml; `make dev` installs it into .venv).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from .local import serve

        serve()
        return 0
    if argv[:1] == ["keys"]:
        from .cli import main as keys_main

        return keys_main(argv[1:])
    print("usage: python -m anthropic_gateway serve | keys <command> (keys --help for the commands)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
