-- Stored admin responses keep the headers a replay must repeat (ETag, Catalog-Token,
-- Location), as a JSON array of [name, value] pairs.
alter table idempotency_keys add column headers jsonb not null default '[]';
