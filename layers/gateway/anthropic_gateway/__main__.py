"""`python -m anthropic_gateway serve` runs the gateway locally; `... keys <command>` manages keys."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        from .local import serve

        serve()
        return 0
    print("usage: python -m anthropic_gateway serve", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
