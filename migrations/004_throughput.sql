-- Throughput: a shared send schedule per business phone number, and what the error-rate halt looks at.

-- Virtual scheduling: every claimed row gets a send slot 1/mps apart, from one row per phone number that all
-- concurrent senders reserve from (one upsert inside the claim statement). Slots never overlap, so no burst can
-- pass the limit however many Lambdas run.
CREATE TABLE rate_limits (
    phone_number_id text PRIMARY KEY,
    next_slot_at    timestamptz NOT NULL DEFAULT now(),
    last_reserved   integer NOT NULL DEFAULT 0,
    -- Overrides WHATSAPP_MAX_MPS for this number (Meta raises it up to 1,000 on request).
    max_mps         integer CHECK (max_mps BETWEEN 1 AND 1000)
);

-- When a send reached its final answer (sent or failed): the last N of a campaign decide the error-rate halt.
ALTER TABLE send_queue ADD COLUMN finished_at timestamptz;
CREATE INDEX send_queue_recent_results_idx ON send_queue (campaign_id, finished_at DESC)
    WHERE finished_at IS NOT NULL;
