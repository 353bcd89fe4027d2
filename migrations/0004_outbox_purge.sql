-- Operators' purges travel through the outbox like writes: a purge row with a product
-- drops that product from every reader's caches; one without a product and without
-- categories flushes every reader's L1.
alter table outbox add column purge boolean not null default false;
