-- The relay's bookkeeping: the dense sequence number every published invalidation
-- carries, and a wake-up channel for the relay (NOTIFY catalog_outbox in each write).

alter table outbox add column seq bigint unique;

-- One row: the next sequence number to assign. Locking it serialises relays, so the
-- sequence stays dense even with several writers.
create table relay_state (
    id        integer primary key default 1 check (id = 1),
    next_seq  bigint not null default 1 check (next_seq >= 1)
);

insert into relay_state default values;

-- SKUs are path segments and Redis value fields: printable, no spaces or slashes.
alter table products add constraint products_sku_charset
    check (sku ~ '^[A-Za-z0-9._-]+$');
