-- Two lanes in the outbox: a bulk import's rows wait behind single writes, so a write
-- made beside a large import reaches readers within milliseconds instead of after the
-- import's whole backlog. A transaction joins the bulk lane with
-- `set local catalog.outbox_lane = 'bulk'`; every outbox row it inserts then takes
-- `bulk = true` from the column's default (an unset or reset setting reads as empty).
alter table outbox add column bulk boolean not null
    default (coalesce(nullif(current_setting('catalog.outbox_lane', true), ''), 'single') = 'bulk');

-- The relay takes the oldest unpublished rows of the single-write lane first.
drop index outbox_unpublished;
create index outbox_unpublished on outbox (bulk, id) where published_at is null;
