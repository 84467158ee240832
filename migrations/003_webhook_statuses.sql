-- Status webhooks: every status Meta reports is kept (idempotently: Meta retries and duplicates), including
-- statuses for WAMIDs we do not know; send_queue.delivery_status only moves forward.
CREATE TABLE message_statuses (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    whatsapp_message_id text NOT NULL,
    status              text NOT NULL,
    occurred_at         timestamptz NOT NULL,
    -- The row id we sent as biz_opaque_callback_data: names the row even when its WAMID was never stored.
    queue_id            bigint,
    recipient_id        text,
    error_code          integer,
    error_title         text,
    received_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT message_statuses_once UNIQUE (whatsapp_message_id, status, occurred_at)
);
CREATE INDEX message_statuses_wamid_idx ON message_statuses (whatsapp_message_id);

ALTER TABLE send_queue
    ADD COLUMN delivery_error_code integer,
    ADD COLUMN delivery_updated_at timestamptz;

-- Numbers that asked not to get marketing messages (131050): never enqueued again.
CREATE TABLE suppressions (
    phone_number text PRIMARY KEY,
    reason       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
