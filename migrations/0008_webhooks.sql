-- Webhook subscriptions and their deliveries (docs/api.md#webhooks).
--
-- Deliveries are fed from the outbox by a trigger, in the transaction of the write
-- that inserts the outbox rows: a committed change has its delivery rows from the
-- moment it commits, whatever happens to the writer, the relay or Redis afterwards,
-- and however soon the sweeper deletes the outbox row once it is published. The event
-- each delivery carries (type, version, deleted, active, categories) is read in that
-- same transaction, so it describes the change at its version, and every attempt of a
-- delivery sends the same body.

-- An endpoint admins registered: where to send, which events, which categories (empty:
-- all), and the signing secrets (Standard Webhooks `whsec_` secrets). After a rotation
-- the previous secret signs too, until `previous_until`.
create table webhooks (
    id               bigint generated always as identity primary key,
    url              text not null check (url ~ '^https?://' and length(url) <= 2048),
    events           text[] not null check (
                         cardinality(events) >= 1
                         and events <@ array['product.updated', 'product.deleted',
                                             'category.updated']::text[]),
    categories       text[] not null default '{}',
    description      text not null default '' check (length(description) <= 500),
    secret           text not null check (secret like 'whsec\_%'),
    previous_secret  text check (previous_secret like 'whsec\_%'),
    previous_until   timestamptz,
    created_at       timestamptz not null default now(),
    rotated_at       timestamptz
);

-- One event for one endpoint. `subject` ('p:<product id>' or 'c:<slug>') and `ordinal`
-- (the product's version; the outbox row's id for a category) order the deliveries of
-- one endpoint: a delivery is sent only when no pending delivery of the same endpoint
-- and subject has a smaller ordinal, so a product's changes arrive in commit order.
-- `state`: pending (to send, or leased by a worker until `next_attempt_at`), delivered
-- (a 2xx answered), dead (retried for CATALOG_WEBHOOK_RETRY_SECS without a 2xx: a dead
-- letter, until an admin replays it). `attempts` fences a worker's result: it is
-- stored only if no other worker claimed the delivery since.
create table webhook_deliveries (
    id               bigint generated always as identity primary key,
    webhook_id       bigint not null references webhooks (id) on delete cascade,
    outbox_id        bigint not null,
    event_type       text not null,
    subject          text not null,
    ordinal          bigint not null,
    product_id       bigint,
    category         text,
    version          bigint not null,
    deleted          boolean not null,
    active           boolean,
    categories       text[] not null,
    committed_at     timestamptz not null,
    state            text not null default 'pending'
                     check (state in ('pending', 'delivered', 'dead')),
    attempts         integer not null default 0 check (attempts >= 0),
    next_attempt_at  timestamptz not null default now(),
    -- Start of the retry period: the first attempt, or the last replay's.
    retry_from       timestamptz,
    last_attempt_at  timestamptz,
    last_status      smallint,
    last_error       text,
    finished_at      timestamptz,
    unique (webhook_id, outbox_id)
);

-- What workers claim: pending deliveries by due time, and the order check.
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at)
    where state = 'pending';
create index webhook_deliveries_order on webhook_deliveries (webhook_id, subject, ordinal)
    where state = 'pending';
-- Dead letters by endpoint, and finished rows by age (retention).
create index webhook_deliveries_dead on webhook_deliveries (webhook_id, id)
    where state = 'dead';
create index webhook_deliveries_finished on webhook_deliveries (finished_at)
    where state <> 'pending';

-- The fan-out: every statement that inserts outbox rows inserts, in the same
-- transaction, one delivery per row and per endpoint that wants it. Purges are not
-- changes and are not delivered. A category row is a change only when the category is
-- gone (deleted) or was written by this transaction (created, renamed or moved); the
-- category row of an operator's purge is neither. An endpoint with categories takes a
-- product change whose write touched one of them (the product was in it before or is
-- in it after), and a category change of one of them. Deleting an endpoint waits for
-- the writes fanning out to it, and takes their deliveries with it.
create function webhook_fan_out() returns trigger
language plpgsql as $$
begin
    if not exists (select 1 from webhooks) then
        return null;
    end if;
    insert into webhook_deliveries (webhook_id, outbox_id, event_type, subject, ordinal,
                                    product_id, category, version, deleted, active,
                                    categories, committed_at)
    select w.id, e.outbox_id, e.event_type, e.subject, e.ordinal, e.product_id,
           e.category, e.version, e.deleted, e.active, e.categories, e.committed_at
    from (
        select n.id as outbox_id,
               case when p.deleted_at is null then 'product.updated'
                    else 'product.deleted' end as event_type,
               'p:' || n.product_id as subject,
               coalesce(n.version, 0) as ordinal,
               n.product_id,
               null::text as category,
               coalesce(n.version, 0) as version,
               p.deleted_at is not null as deleted,
               p.active,
               array(select c.slug from product_categories pc
                     join categories c on c.id = pc.category_id
                     where pc.product_id = n.product_id order by c.slug) as categories,
               n.categories as touched,
               n.created_at as committed_at
        from new_rows n join products p on p.id = n.product_id
        where not n.purge
        union all
        select n.id, 'category.updated', 'c:' || n.categories[1], n.id, null,
               n.categories[1], 0, c.id is null, null, n.categories, n.categories,
               n.created_at
        from new_rows n left join categories c on c.slug = n.categories[1]
        where not n.purge and n.product_id is null and cardinality(n.categories) = 1
          and (c.id is null or c.updated_at = now())
    ) e
    join webhooks w on e.event_type = any (w.events)
        and (cardinality(w.categories) = 0 or w.categories && e.touched)
    -- Locked as the foreign key would lock them, but before the insert: an endpoint
    -- deleted by a transaction that commits meanwhile is skipped (read committed
    -- rechecks locked rows), where the foreign key check would fail the write.
    for key share of w
    on conflict do nothing;
    return null;
end
$$;

create trigger outbox_webhooks after insert on outbox
    referencing new table as new_rows
    for each statement execute function webhook_fan_out();
