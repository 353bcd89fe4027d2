-- The webhook fan-out reads each product change's current categories. It joined
-- `product_categories` to `categories` for every outbox row, and for that correlated
-- subquery the planner hashed the whole `categories` table each time (the same plan
-- the read queries had, `src/store/catalog.rs`): with endpoints registered, a bulk
-- import paid a scan of every category per product (the categories of 500 products,
-- 500 categories: 17-18 ms joined, 2.3 ms by primary key, `EXPLAIN ANALYZE`). Each slug
-- is now looked up by the category's primary key. The function is otherwise the one of
-- 0008.
create or replace function webhook_fan_out() returns trigger
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
               array(select (select c.slug from categories c where c.id = pc.category_id)
                     from product_categories pc
                     where pc.product_id = n.product_id order by 1) as categories,
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
