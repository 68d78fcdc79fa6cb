"""`python -m anthropic_gateway serve` runs the gateway locally; `... keys|teams|users|tags <command>` manage
keys, teams, users and registered tags; `audit` reads the audit log; `login` and `key` get a developer's
personal key through single sign-on; `moto` runs moto's server as `serve` embeds it, for `sam local`.

`anthropic-gateway ...` is the same command, as the console script the package installs
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
    if argv[:1] == ["moto"]:  # moto's server as `serve` embeds it, for `sam local` (docs/deploy.md)
        from .local import serve_moto

        serve_moto(argv[1:])
        return 0
    if argv[:1] == ["keys"]:
        from .cli import main as keys_main

        return keys_main(argv[1:])
    if argv[:1] in (["teams"], ["users"], ["tags"], ["audit"]):
        from .org_cli import main as org_main

        return org_main(argv[0], argv[1:])
    if argv[:1] in (["login"], ["key"]):  # a developer's personal key through single sign-on
        from .login_cli import main as login_main

        return login_main(argv)
    print(
        "usage: python -m anthropic_gateway serve | keys|teams|users|tags <command> | audit [filters] | login | key "
        "| moto [-H host] [-p port] (keys --help for the commands)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
