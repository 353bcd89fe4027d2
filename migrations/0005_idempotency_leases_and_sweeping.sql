-- Idempotency keys are leased: a request that claims a key holds it until `locked_until`,
-- and a retry that finds the lease expired while no response is stored takes the key
-- over. `attempt` counts the claims of a key: the response is stored in the write's own
-- transaction only while the attempt that ran the write still holds the key, so a
-- request that lost its key to a retry rolls its write back.
-- Rows claimed before this migration get a lease that has already expired.
alter table idempotency_keys
    add column locked_until timestamptz not null default now(),
    add column attempt integer not null default 1 check (attempt >= 1);

-- The sweeper deletes published outbox rows older than the retention period, oldest
-- first, in small batches; unpublished rows are not in this index.
create index outbox_published on outbox (published_at) where published_at is not null;
