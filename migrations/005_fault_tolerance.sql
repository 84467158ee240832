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

-- A claim reserves only the send slots that fall within MAX_SLOT_WAIT_SECONDS; the rows beyond are deferred
-- unsent and line up: `deferred_until` is where the line ends. A deferred row's message carries its place in
-- line and comes back when that place nears, so deferred rows return at the rate they can be served instead
-- of all at once. Rows back from the line take free slots before fresh rows; a row back from the line that
-- finds no slot keeps its place (only fresh rows lengthen the line). The line reserves nothing: no slot waits
-- for a row that may never come back.
ALTER TABLE rate_limits
    ADD COLUMN deferred_until timestamptz,
    -- What the last claim asked for, and how many of those rows came back from the line.
    ADD COLUMN requested integer NOT NULL DEFAULT 0,
    ADD COLUMN requested_in_line integer NOT NULL DEFAULT 0;

-- The schedule's arithmetic, in one place: a claim of `in_line` rows back from the line and `fresh` rows asks a
-- number's schedule (booked until `booked_until`, its line ending at `line_until`, `mps` slots a second) for
-- slots; it gets those that fall within `max_wait` seconds. One clock_timestamp(), read after the caller got
-- the schedule's row lock: a claim that waited for the lock never books slots already past.
CREATE FUNCTION reserve_send_slots(
    booked_until timestamptz, line_until timestamptz, mps float8, in_line integer, fresh integer, max_wait float8
) RETURNS TABLE (next_slot_at timestamptz, slots integer, deferred_until timestamptz)
LANGUAGE sql VOLATILE AS $$
    WITH start AS (
        SELECT greatest(booked_until, clock_timestamp()) AS first_slot, clock_timestamp() AS now
    ),
    free AS (
        SELECT first_slot,
               greatest(floor((max_wait - extract(epoch FROM first_slot - now)) * mps), 0)::integer AS capacity
        FROM start
    ),
    booked AS (
        SELECT first_slot, least(in_line + fresh, capacity) AS slots FROM free
    )
    SELECT first_slot + slots * interval '1 second' / mps,
           slots,
           -- Only fresh rows without a slot join the line; rows back from it keep their places.
           greatest(line_until, first_slot + slots * interval '1 second' / mps)
               + (fresh - (slots - least(in_line, slots))) * interval '1 second' / mps
    FROM booked
$$;
