-- Quiet hours: a campaign may send only inside a daily window of its recipients' local time (`send_window_opens`
-- to `send_window_closes`; closes before opens: overnight). Each row keeps its recipient's time zone, from the
-- number (the phonenumbers data; a default zone for numbers that span several). A row outside its window waits
-- (`wait_until` = the window's next opening, `wait_reason` = 'send window'), without an SQS message.
ALTER TABLE campaigns
    ADD COLUMN send_window_opens  time,
    ADD COLUMN send_window_closes time;
ALTER TABLE send_queue ADD COLUMN time_zone text;

-- When the window of `zone` next opens, or NULL while it is open (or without a window).
CREATE FUNCTION send_window_opens_at(opens time, closes time, zone text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN opens IS NULL OR zone IS NULL THEN NULL
        WHEN opens <= closes AND l.t >= opens AND l.t < closes THEN NULL
        WHEN opens > closes AND (l.t >= opens OR l.t < closes) THEN NULL
        WHEN l.t < opens THEN (l.d + opens) AT TIME ZONE zone
        ELSE (l.d + 1 + opens) AT TIME ZONE zone
    END
    FROM (SELECT (now() AT TIME ZONE zone)::time AS t, (now() AT TIME ZONE zone)::date AS d) l
$$;
