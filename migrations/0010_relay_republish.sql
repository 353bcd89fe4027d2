-- After Redis lost published entries (a failover to a replica that had not received
-- them, a restore, a restart without persistence), the relay publishes every change of
-- L2's lifetime again. It used to mark all those outbox rows unpublished in one
-- statement inside the round that found the loss; after a large import within that
-- lifetime (millions of rows) the statement outlasted the database deadline, the round
-- rolled back, and every later round found the loss again and failed the same way: the
-- relay never published again. The round that finds the loss now records the window of
-- publication times to publish again, a cheap update of this one row, and each later
-- round takes the next rows of that window (by the `outbox_published` index) beside the
-- unpublished ones, until none is left.
alter table relay_state
    add column republish_after timestamptz,
    add column republish_before timestamptz;
