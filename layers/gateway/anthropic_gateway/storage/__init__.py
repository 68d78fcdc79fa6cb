"""Everything the gateway keeps in its one DynamoDB table, one module per item family.

  - `table`: the handle, how values are stored, and the write primitive every family uses (`write`);
  - `key_records`: key records, alias items and the pointers a regenerate leaves;
  - `rates`: per-minute rate counters and parallel slots, under a scope's pk;
  - `budgets`: budget holds and reservations on a scope's record, and its period reset;
  - `spend`: spend counters written exactly once (operation markers), and spend per tag and day;
  - `batch_items`: the batches a key created, until they are settled;
  - `scopes`: a scope (key, team, user, membership, tag) as admission sees it, and the refusals;
  - `holds`: admission of one request across all its scopes in one call, and its settle in one transaction;
  - the organisation (`layout` says where its items live): `teams`, `members`, `users`, `tags`, and `key_links`
    (which keys a team or a user has), with what they share in `scope_items` and `outcomes`.

These modules are the only code that writes to the table. They answer with outcomes (small dataclasses), never
with HTTP errors: policy (governance.py, batches.py, the admin routes) decides what an outcome means for a client.
"""
