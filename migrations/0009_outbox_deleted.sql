-- Whether a product change left the product invisible to the storefront (deleted, or
-- inactive): the change feed says so. A trigger sets it from the product's state inside
-- the writing transaction, after the product's own write, so every path that writes
-- outbox rows (single writes, bulk imports, category deletes) gets it without each
-- having to. Purge rows and rows without a product keep false.
alter table outbox add column deleted boolean not null default false;

create function outbox_set_deleted() returns trigger language plpgsql as $$
begin
    if new.product_id is not null and not new.purge then
        new.deleted := exists (
            select 1 from products
            where id = new.product_id and (deleted_at is not null or not active)
        );
    end if;
    return new;
end
$$;

create trigger outbox_deleted before insert on outbox
    for each row execute function outbox_set_deleted();
