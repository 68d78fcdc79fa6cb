"""Create in a local moto server what `sam local` runs expect: the table and the two secrets of events/env.json.

    anthropic-gateway moto -H 0.0.0.0 -p 5000 &            # DynamoDB + Secrets Manager on this machine
    python events/seed_moto.py                             # table, upstream key ($ANTHROPIC_API_KEY), master key
    sam build && sam local start-api                       # samconfig.toml passes --env-vars events/env.json
    curl -H "Authorization: Bearer sk-master-test-0123456789abcdef" -X POST localhost:3000/key/generate

The functions reach moto as host.docker.internal:5000 (env.json); this script, running on the host, uses
127.0.0.1 unless --endpoint says otherwise. The master key is the fixed test value the events/*.json use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MASTER_KEY = "sk-master-test-0123456789abcdef"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--endpoint", default="http://127.0.0.1:5000", help="moto server URL as seen from here")
    args = parser.parse_args(argv)

    names = json.loads((HERE / "env.json").read_text())["Parameters"]
    os.environ.update(
        AWS_ENDPOINT_URL=args.endpoint,
        AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        AWS_DEFAULT_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        GATEWAY_TABLE_NAME=names["GATEWAY_TABLE_NAME"],
        UPSTREAM_KEY_SECRET_NAME=names["UPSTREAM_KEY_SECRET_NAME"],
        MASTER_KEY_SECRET_NAME=names["MASTER_KEY_SECRET_NAME"],
    )
    sys.path.insert(0, str(HERE.parent / "layers" / "gateway"))
    from anthropic_gateway import local  # the same table and secrets `make dev` creates

    upstream_key = os.environ.get("ANTHROPIC_API_KEY") or "not-configured"
    local.create_resources(upstream_key, MASTER_KEY)
    print(f"seeded {args.endpoint}: table {names['GATEWAY_TABLE_NAME']}, master key {MASTER_KEY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
