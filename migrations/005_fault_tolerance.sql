-- Exactly-once under infrastructure faults: which message a row belongs to, what the ambiguous policy resent,
-- the key that signs biz_opaque_callback_data, and a send schedule that only reserves what can be sent soon.

ALTER TABLE send_queue
    -- The enqueue run of the row's current SQS message: written by every enqueue and by the claim. A message
    -- whose receives ran out fails its row only while it is still the row's current message.
    ADD COLUMN enqueue_id text,
    -- How often reset_stuck put the row back to `ready` while no component had seen whether Meta accepted it
    -- (AMBIGUOUS_POLICY=resend): the only way a recipient can get a message twice.
    ADD COLUMN unconfirmed_resends integer NOT NULL DEFAULT 0;

-- One row: the secret that makes biz_opaque_callback_data tamper-evident. A status naming a row is trusted
-- only when its callback data was signed with this database's key (not another stack's, not another tool's).
CREATE TABLE deployment (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    callback_key text NOT NULL DEFAULT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
    created_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO deployment DEFAULT VALUES;

-- What the last claim asked for; the claim reserves at most the slots that fall within MAX_SLOT_WAIT_SECONDS.
ALTER TABLE rate_limits ADD COLUMN requested integer NOT NULL DEFAULT 0;
