#!/bin/bash
# Start command of the streaming door (the function's Handler).
#
# The Lambda Web Adapter layer's wrapper (/opt/bootstrap, set by AWS_LAMBDA_EXEC_WRAPPER) execs this script
# instead of the Python runtime; the adapter extension then waits for GET /health to answer and forwards each
# Function URL request to uvicorn over 127.0.0.1, streaming the response body back as it is written.
#
# - /opt/python is where the gateway layer's package and dependencies land; a plain `python` process does not
#   get the runtime's layer paths, so they are added here.
# - uvicorn's own command line (uvicorn.main), run with Python's cyclic garbage collector off: its passes over the
#   objects the start makes (modules, the AWS clients' models) were a tenth of the start's CPU. Those objects live
#   as long as the process; the app freezes them out of the collector's reach and turns it on once it has started,
#   before /health answers (app.py, GatewayApp.start).
# - 127.0.0.1 only: the adapter is the sole client, nothing else should reach the app.
# - The port comes from the adapter's own setting so the two cannot disagree (AWS_LWA_PORT, else PORT).
# - --no-server-header, --no-date-header: pass-through responses carry Anthropic's own Server and Date headers
#   (the app forwards them), and uvicorn would add a second of each.
# - --no-access-log: the app logs each request itself (Powertools, JSON, with key and usage); uvicorn's line
#   would only duplicate it in CloudWatch.
# - KEEP_ALIVE_TIMEOUT=900 unless set: the adapter is the only client and reuses its pooled connection across
#   invocations; the 5 s default would close it between two requests and race the adapter's next write on it.
#   The protocol below reads it, with the door's other bounds on a client (MAX_REQUEST_HEAD_BYTES,
#   MAX_REQUEST_HEADERS, REQUEST_HEAD_TIMEOUT, MAX_CONNECTIONS: settings.py, docs/operations.md).
# - --timeout-graceful-shutdown 1: at SIGTERM (Lambda's shutdown phase gives about 2 s), streams still open get
#   1 s to finish, are then cut (what they relayed is still billed), and the app drains its accounting and ledger
#   in the second that is left (docs/operations.md).
# - --http anthropic_gateway.server_protocol:OneWritePerTurn: uvicorn's httptools protocol (llhttp's C parser; the
#   layer ships it for both architectures) bounded in what a client can cost (head size and count, head time,
#   idle time, connections), with a response's head and body sent in one write, not two (server_protocol.py,
#   issues 11 and 18). --loop asyncio: asyncio's own loop, as uvloop did not pay for its size.
set -euo pipefail

export PYTHONPATH="/opt/python${PYTHONPATH:+:$PYTHONPATH}"
export KEEP_ALIVE_TIMEOUT="${KEEP_ALIVE_TIMEOUT:-900}"

exec python3 -c 'import gc, sys; gc.disable(); from uvicorn.main import main; sys.exit(main())' \
    --host 127.0.0.1 \
    --port "${AWS_LWA_PORT:-${PORT:-8080}}" \
    --no-server-header \
    --no-date-header \
    --no-access-log \
    --timeout-graceful-shutdown 1 \
    --http anthropic_gateway.server_protocol:OneWritePerTurn \
    --loop asyncio \
    anthropic_gateway.app:app
