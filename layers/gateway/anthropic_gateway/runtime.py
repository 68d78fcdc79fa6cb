"""Everything a running gateway holds, in one object: built when its app starts, closed when it stops.

As with Starlette's `app.state`, the app (app.py) builds one `Runtime` in its lifespan, or at the buffered door's
init (functions/api/handler.py), and closes it at shutdown. A runtime belongs to one app and its event loop:

    settings        the environment, read once (settings.py)
    aws             bounded AWS calls: the AWS clients' credentials and bounds, worker-thread limiter, reads in
                    flight, failure memory (aws.py)
    table           the DynamoDB table handle, made at start and installed for the storage modules, which reach it
                    through `table.handle()` (storage/table.py)
    secrets         the upstream and master keys and any other secret, cached (secrets.py)
    bedrock         the Bedrock upstream and its credentials (bedrock.py)
    pools           keep-alive connections to each upstream (forwarding.py)
    key_cache       key records read lately, and the key directory that refuses floods of unknown keys (keys.py)
    owners          the teams, users and memberships of keys, read lately (owners.py)
    team_registry   the teams, for the metrics' Team dimension (storage/teams.py, storage/registry.py)
    tag_registry    the registered tags, for governance and the metrics' Tag dimension (storage/tags.py)
    upstreams       what the pass-through forwards with: settings, pools, Bedrock, secrets; AWS calls and
                    unknown-model prices for batch answers (forwarding.py)
    metrics         where EMF blobs and log lines go, and the Tag values given out; it reads the registries
                    (metrics.py)
    unknown_models  the price of models pricing.json does not know, and which were logged (pricing.py)
    background      after-response tasks (background.py)
    accounting      requests ended and not settled yet (accounting.py)
    ledger          counters not written yet, and writes kept for retry (ledger.py)
    batch_sweeps    when the last sweep of the batches due to be settled started (batches.py)

Nothing reaches a runtime implicitly: the app hands it (or the part a callee needs) down the request path, and
the admin app reaches it in its state (admin.py; a route: `auth.runtime_of(request)`). The app gives
`authenticate`, `governance.admit` and `batches.admit` the runtime, `routing.forward` the `upstreams` and
`request_body.read` the size limit; accounting settles with the runtime that built it; an admin route hands its
callees the caches and registries its writes change (storage never reaches them). Modules below this one take
what they use as parameters, typed by the parts they need (`governance.Parts`, `batches.Parts`, `auth.Parts`,
`auth.AdminParts`, `sso.Parts`, `accounting.Parts`: protocols this class satisfies), so none of them imports this
module. The one ContextVar left is a request's AWS deadline (aws.py): it belongs to a request and the tasks it
starts, not to a process.

Settings come from the runtime, or as the values a callee needs; `settings.get_settings()` (the environment, read
once per process) is read only where a runtime is built (the app's lifespan, the buffered door, local.py) and by
what is still per process.

Still one per process: the table handle storage reaches (storage/table.py: the one the runtime that started last
installed, or, for code run outside a started runtime, one made on first use from the process's settings); and the
streaming door's HTTP protocol (server_protocol.py), which uvicorn builds per connection from its import path, so
it reads its bounds from the settings of the process.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import sys
from typing import IO

from aws_lambda_powertools import Logger

from . import batches, pricing
from .accounting import Accounting
from .aws import AwsCalls
from .background import Background
from .bedrock import Bedrock
from .errors import GatewayError
from .forwarding import UpstreamPools, Upstreams
from .keys import KeyCache
from .ledger import Ledger
from .metrics import Metrics
from .owners import OwnersCache
from .secrets import Secrets
from .settings import Settings
from .storage import table
from .storage.tags import TagRegistry
from .storage.teams import TeamRegistry

logger = Logger(child=True)


class Runtime:
    """The state of one running gateway (see the module's docstring for its parts).

    Building one does no I/O and raises on settings that cannot work (a bad BEDROCK_BASE_URL), so the app can
    refuse to start. `stream`: where EMF blobs and log lines go (stdout, as it is when the runtime is built).
    """

    def __init__(self, settings: Settings, stream: IO[str] | None = None) -> None:
        self.settings = settings
        self.aws = AwsCalls(settings)
        self.secrets = Secrets(settings, self.aws)
        self.bedrock = Bedrock.from_settings(settings, self.secrets)
        self.pools = UpstreamPools(settings, self.bedrock.base_url)
        self.key_cache = KeyCache(settings)
        self.owners = OwnersCache(settings)
        self.team_registry = TeamRegistry(settings)
        self.tag_registry = TagRegistry(settings)
        self.metrics = Metrics(settings, stream or sys.stdout, self.team_registry, self.tag_registry)
        self.unknown_models = pricing.UnknownModels(settings.unknown_model_rate, settings.bedrock_model_ids)
        self.upstreams = Upstreams(settings, self.pools, self.bedrock, self.secrets, self.aws, self.unknown_models)
        self.background = Background()
        self.accounting = Accounting(self)
        self.ledger = Ledger(settings, self.aws)
        self.batch_sweeps = batches.SweepClock()
        self.table: table.Table | None = None
        # What failed is written as soon as DynamoDB answers again, not when the backoff says.
        self.aws.on_recovery(self.ledger.retry_now)

    async def start(self) -> None:
        """Log lines to this runtime's stream, then `warm`."""
        self.metrics.route_logs()
        await self.warm()

    async def warm(self) -> None:
        """Make the AWS clients and read both keys now, at init, rather than in front of the first request: what a
        cold start costs is then paid before the Lambda Web Adapter's readiness check passes. Bounded by
        AWS_DEADLINE: an AWS outage at start delays readiness by that much at most, and a request then reads what
        the warm-up could not (the work still running is shared with it, `aws.call_shared`)."""

        async def open_table() -> None:
            self.table = await self.aws.call(table.open_table, self.settings.table_name, self.aws)
            table.install(self.table)

        async def warm_up() -> list[object]:  # a task of its own: its AWS deadline is not the caller's
            # The Secrets Manager client first (the session's first client also loads its endpoint data), then both
            # keys read while the DynamoDB client is made: the reads' network waits overlap that CPU work.
            try:
                await self.aws.call(self.secrets.client)
            except Exception as exc:
                return [exc]
            work = (self.secrets.master_key(), self.secrets.upstream_key(), open_table())
            return list(await asyncio.gather(*work, return_exceptions=True))

        failures = [_reason(result) for result in await asyncio.create_task(warm_up()) if isinstance(result, Exception)]
        if failures:
            logger.warning(
                "warm-up at start incomplete; requests will read what it could not", extra={"errors": failures}
            )

    async def drain(self) -> None:
        """Finish every request's after-response work (accounting), then write what the ledger still holds.

        Lambda freezes a process between invocations: the buffered door drains before each invocation returns
        (functions/api/handler.py), the streaming door at shutdown (uvicorn's lifespan; the Lambda Web Adapter is an
        extension, so Lambda sends SIGTERM before it ends the environment).
        """
        self.accounting.settle_queued()
        await self.background.wait()
        await self.ledger.flush()

    async def close(self) -> None:
        """Drain, then close every upstream connection and drop the secrets: the one place a runtime ends."""
        await self.drain()
        await self.pools.close()
        self.secrets.forget()

    # -- SnapStart (app.py serves the hooks) ----------------------------------------------------------------------

    async def before_checkpoint(self) -> None:
        """Before Lambda snapshots this environment: finish pending work, then leave nothing in memory that must
        not be shared by every environment restored from the snapshot (connections, credentials, secrets)."""
        await self.drain()
        await self.forget()

    async def after_restore(self) -> None:
        """In an environment restored from a snapshot, before it serves: forget whatever the snapshot holds,
        re-seed every random source (each restored environment starts from the same memory), then warm up again.
        Its monotonic clock did not run while the snapshot waited, so no cached value can tell its own age."""
        await self.forget()
        reseed_random()
        await self.warm()

    async def forget(self) -> None:
        """Close upstream connections, drop AWS clients and credentials, forget cached secrets, key records, their
        owners and the registries (a snapshot's copies may be hours old, and their age cannot tell)."""
        await self.pools.close()
        self.secrets.forget()
        self.aws.forget_session()
        self.aws.forget_failures()
        self.bedrock.forget_credentials()
        if self.table is not None:
            self.table.close()
            self.table = None
            table.install(None)
        self.key_cache.forget()
        self.owners.forget()
        self.team_registry.clear()
        self.tag_registry.clear()


def _reason(exc: Exception) -> str:
    """Why a warm-up read failed, for the log: the gateway's own message (it never holds a secret), else the type."""
    return exc.message if isinstance(exc, GatewayError) else type(exc).__name__


def reseed_random() -> None:
    """Fresh entropy for every random source a process restored from a snapshot would otherwise share: Python's
    `random` (botocore's retry jitter, Powertools' log sampling) and OpenSSL's generator (TLS). Ids that must be
    unique never come from these (`exchange.new_request_id`, `secrets`: os.urandom)."""
    random.seed()
    ssl.RAND_add(os.urandom(32), 32.0)
