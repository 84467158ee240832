-- Messages from the DLQ that name no send_queue row (unparseable, or the row is gone): kept, never dropped.
CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  text NOT NULL UNIQUE,
    body        text NOT NULL,
    attributes  jsonb NOT NULL DEFAULT '{}',
    reason      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
