-- sendonce schema: campaigns, one send_queue row per (campaign, recipient), and the one definition of the
-- counters. Applied once by `sendonce migrate`, inside a transaction.

CREATE TABLE campaigns (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name             text NOT NULL CHECK (name <> ''),
    status           text NOT NULL DEFAULT 'running'
                     CHECK (status IN ('draft', 'scheduled', 'running', 'paused', 'cancelled', 'completed')),
    template_name    text NOT NULL CHECK (template_name <> ''),
    language_code    text NOT NULL CHECK (language_code <> ''),
    phone_number_id  text NOT NULL CHECK (phone_number_id <> ''),
    -- Template components other than the body parameters (header media, buttons), sent as given.
    components       jsonb NOT NULL DEFAULT '[]',
    pause_reason     text,
    -- Snapshots written from campaign_counters by recompute_counters; never incremented per attempt.
    total_recipients integer NOT NULL DEFAULT 0,
    total_sent       integer NOT NULL DEFAULT 0,
    total_failed     integer NOT NULL DEFAULT 0,
    total_delivered  integer NOT NULL DEFAULT 0,
    total_read       integer NOT NULL DEFAULT 0,
    total_cancelled  integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);

CREATE TABLE send_queue (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id         uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    -- E.164 digits without '+', e.g. 919741771659.
    phone_number        text NOT NULL CHECK (phone_number ~ '^[1-9][0-9]{6,14}$'),
    -- Fill the template body's {{1}}..{{N}}.
    params              text[] NOT NULL DEFAULT '{}',
    status              text NOT NULL DEFAULT 'ready'
                        CHECK (status IN ('ready', 'processing', 'sent', 'failed', 'cancelled')),
    whatsapp_message_id text,
    actual_sent_at      timestamptz,
    claim_token         uuid,
    claimed_at          timestamptz,
    attempts            integer NOT NULL DEFAULT 0,
    last_error_code     integer,
    last_error          text,
    delivery_status     text CHECK (delivery_status IN ('delivered', 'read', 'failed')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT send_queue_one_row_per_recipient UNIQUE (campaign_id, phone_number),
    CONSTRAINT send_queue_sent_has_wamid CHECK (status <> 'sent' OR whatsapp_message_id IS NOT NULL)
);

-- A WAMID belongs to one row: a second accepted send can never be stored over the first.
CREATE UNIQUE INDEX send_queue_wamid_key ON send_queue (whatsapp_message_id)
    WHERE whatsapp_message_id IS NOT NULL;

-- reset_stuck scans only rows that may be stuck.
CREATE INDEX send_queue_stuck_processing_idx ON send_queue (claimed_at)
    WHERE status = 'processing' AND whatsapp_message_id IS NULL;

-- Counting a campaign is an index-only scan over this index, not a heap scan.
CREATE INDEX send_queue_counting_idx ON send_queue (campaign_id, status, delivery_status);

-- The one definition of a campaign's numbers. The CLI, the API and campaigns.total_* all read it.
-- LATERAL keeps it cheap: a filter on campaigns (one id, or the unfinished ones) runs before the counting,
-- and each campaign is counted by an index-only scan of send_queue_counting_idx.
CREATE VIEW campaign_counters AS
SELECT c.id AS campaign_id,
       c.name,
       c.status,
       c.pause_reason,
       n.recipients,
       n.pending,
       n.sent,
       n.delivered,
       n.read,
       n.failed,
       n.cancelled,
       c.created_at,
       c.completed_at
FROM campaigns c
CROSS JOIN LATERAL (
    SELECT count(*)::integer                                                         AS recipients,
           (count(*) FILTER (WHERE q.status IN ('ready', 'processing')))::integer    AS pending,
           (count(*) FILTER (WHERE q.status = 'sent'))::integer                      AS sent,
           (count(*) FILTER (WHERE q.delivery_status IN ('delivered', 'read')))::integer AS delivered,
           (count(*) FILTER (WHERE q.delivery_status = 'read'))::integer             AS read,
           (count(*) FILTER (WHERE q.status = 'failed'))::integer                    AS failed,
           (count(*) FILTER (WHERE q.status = 'cancelled'))::integer                 AS cancelled
    FROM send_queue q
    WHERE q.campaign_id = c.id
) n;
