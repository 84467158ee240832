-- Cost (docs/cost.md): the pricing object Meta puts in status webhooks (per-message pricing since 2025-07-01),
-- kept with each status and, per row, as its last report: the category Meta billed it in and whether it is billable.
ALTER TABLE message_statuses
    ADD COLUMN pricing_category text,
    ADD COLUMN pricing_type     text,
    ADD COLUMN billable         boolean;

ALTER TABLE send_queue
    ADD COLUMN pricing_category text,
    ADD COLUMN billable         boolean;
