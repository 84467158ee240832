-- Meta's limits: templates as Meta reports them, every account event its webhooks send, the portfolio's
-- messaging limit, and rows that wait (for room in that limit, or after an error that means "not now").

-- Templates: the preflight's cache (read from the Graph API) and their status as the webhooks report it.
CREATE TABLE templates (
    name             text NOT NULL,
    language         text NOT NULL,
    waba_id          text,
    template_id      text,
    status           text NOT NULL,
    category         text,
    parameter_format text,
    components       jsonb NOT NULL DEFAULT '[]',
    -- With the last status event: Meta's reason, and its pause title (FIRST_PAUSE ...) and description.
    reason           text,
    -- When a pause ends by Meta's rules (3 h, then 6 h); Meta does not send it.
    paused_until     timestamptz,
    -- Last read from the Graph API: the preflight trusts the row for TEMPLATE_CACHE_SECONDS.
    fetched_at       timestamptz,
    -- Meta's time of the last status event applied: an older event (a retry, out of order) changes nothing.
    event_at         timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, language)
);

-- Every change Meta's webhooks report besides message statuses (template status, quality and category,
-- phone number quality, business capability, account updates), kept once each.
CREATE TABLE meta_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    field       text NOT NULL,
    waba_id     text,
    occurred_at timestamptz NOT NULL,
    value       jsonb NOT NULL,
    -- sha256 of field, WABA, time and value: Meta's retries and duplicates are kept once.
    digest      text NOT NULL UNIQUE,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meta_events_received_idx ON meta_events (received_at);

-- The business portfolio's messaging limit: how many unique users its numbers may message in a moving window
-- (24 h). One row per business phone number; the numbers of one portfolio share `portfolio_id` and the limit.
-- A number without a row has an unknown limit: its campaigns are not held back.
CREATE TABLE messaging_limits (
    phone_number_id      text PRIMARY KEY,
    portfolio_id         text NOT NULL,
    max_recipients       integer CHECK (max_recipients > 0), -- NULL: unlimited
    tier                 text,                                -- Meta's name: TIER_250 ... TIER_UNLIMITED
    source               text NOT NULL CHECK (source IN ('operator', 'graph', 'webhook')),
    display_phone_number text,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messaging_limits_portfolio_idx ON messaging_limits (portfolio_id);

ALTER TABLE campaigns
    -- Resume by itself when what paused it is over (its template approved again, a spam-limit pause ended).
    ADD COLUMN auto_resume  boolean NOT NULL DEFAULT false,
    -- What paused it: operator, template, spam_limit, halt, error_rate.
    ADD COLUMN paused_by    text,
    ADD COLUMN paused_until timestamptz;

-- A `ready` row that waits: not sent before `wait_until` (room in the messaging limit, or 24 h after a 131049),
-- and without an SQS message meanwhile: reset_stuck enqueues it when its wait is over.
ALTER TABLE send_queue
    ADD COLUMN wait_until  timestamptz,
    ADD COLUMN wait_reason text;
CREATE INDEX send_queue_waiting_idx ON send_queue (wait_until) INCLUDE (campaign_id) WHERE wait_until IS NOT NULL;
-- The messaging window reads recent sends by time.
CREATE INDEX send_queue_sent_at_idx ON send_queue (actual_sent_at) INCLUDE (campaign_id, phone_number)
    WHERE actual_sent_at IS NOT NULL;

-- The one definition of the messaging window: the users a portfolio messaged within `window_seconds`, each with
-- the time of their last message. Sent rows count from actual_sent_at (written after Meta accepted, so a user
-- leaves the window no earlier than at Meta); rows in flight (`processing`) count as sent now.
CREATE FUNCTION messaging_window(portfolio text, window_seconds float8)
RETURNS TABLE (phone_number text, last_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT r.phone_number, max(r.at)
    FROM (
        SELECT q.phone_number, q.actual_sent_at AS at, q.campaign_id
        FROM send_queue q
        WHERE q.actual_sent_at > now() - make_interval(secs => window_seconds)
        UNION ALL
        SELECT q.phone_number, now(), q.campaign_id
        FROM send_queue q
        WHERE q.status = 'processing' AND q.whatsapp_message_id IS NULL
    ) r
    JOIN campaigns c ON c.id = r.campaign_id
    JOIN messaging_limits m ON m.phone_number_id = c.phone_number_id AND m.portfolio_id = portfolio
    GROUP BY r.phone_number
$$;

-- When the `place`-th new user (counting from now) finds room in a limit of `cap`, given the last-message times
-- of the users in the window (`recent`, oldest first): places up to the free room at once, the next ones as the
-- oldest users leave the window, and beyond the cap one window later per round (each admitted user leaves one
-- window after its own message).
CREATE FUNCTION messaging_room_at(place bigint, cap integer, recent timestamptz[], window_seconds float8)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    -- One expression (no FROM), so that PostgreSQL inlines it into the statements that call it per row.
    SELECT CASE WHEN (place - 1) % cap + 1 <= cap - coalesce(cardinality(recent), 0) THEN now()
                ELSE recent[(place - 1) % cap + 1 - (cap - coalesce(cardinality(recent), 0))]
                     + make_interval(secs => window_seconds) END
           + make_interval(secs => window_seconds * ((place - 1) / cap))
$$;

-- What the claims of each portfolio admitted since its window was last counted: `counted` users were in the
-- window at `counted_at`, and at most `admitted` new ones joined it since (users only leave a window by
-- themselves). While counted + admitted + the rows asking stays within the limit, a claim admits them without
-- counting the window again; past it, it counts (and starts over). Written only by admit_recipients, under the
-- portfolio's lock.
CREATE TABLE messaging_usage (
    portfolio_id text PRIMARY KEY,
    counted      integer NOT NULL,
    counted_at   timestamptz NOT NULL,
    admitted     integer NOT NULL
);

-- A portfolio whose numbers or limit change is counted again at its next claim: a number that joins it brings
-- its users, which the bound never saw.
CREATE FUNCTION forget_messaging_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM messaging_usage
    WHERE portfolio_id IN (CASE WHEN TG_OP <> 'INSERT' THEN OLD.portfolio_id END,
                           CASE WHEN TG_OP <> 'DELETE' THEN NEW.portfolio_id END);
    RETURN NULL;
END
$$;
CREATE TRIGGER messaging_limits_changed AFTER INSERT OR UPDATE OR DELETE ON messaging_limits
    FOR EACH ROW EXECUTE FUNCTION forget_messaging_usage();

-- The claim's admission (sender): which of a batch's sendable rows may be sent now. Rows of numbers without a
-- known limit always; rows of a limited portfolio under its lock: all of them while the bound above allows,
-- else by the window counted again (each query of a VOLATILE function reads with a snapshot taken after the
-- lock, so two concurrent claims never both see the same last free room): users already in the window always
-- (they use no room), new users while there is room, in the batch's order. The others get the time their room
-- frees (`wait_until`).
CREATE FUNCTION admit_recipients(ids bigint[], phones text[], numbers text[], window_seconds float8)
RETURNS TABLE (id bigint, admitted boolean, wait_until timestamptz)
LANGUAGE plpgsql VOLATILE
SET work_mem = '64MB'  -- the window of a 100K portfolio is grouped in memory
AS $$
DECLARE
    portfolio text;
    cap integer;
    asking integer;
    bound integer;
    used integer;
    joined integer;
    decided record;
BEGIN
    -- Numbers without a limit, in no limited portfolio: not held back.
    RETURN QUERY
        SELECT u.id, true, NULL::timestamptz
        FROM unnest(ids, numbers) AS u (id, number)
        LEFT JOIN messaging_limits m ON m.phone_number_id = u.number
        WHERE m.phone_number_id IS NULL
           OR NOT EXISTS (SELECT 1 FROM messaging_limits l WHERE l.portfolio_id = m.portfolio_id
                                                               AND l.max_recipients IS NOT NULL);
    FOR portfolio, cap IN
        SELECT m.portfolio_id, (SELECT min(l.max_recipients) FROM messaging_limits l
                                WHERE l.portfolio_id = m.portfolio_id)
        FROM messaging_limits m
        WHERE m.phone_number_id = ANY (numbers)
        GROUP BY m.portfolio_id
        HAVING (SELECT min(l.max_recipients) FROM messaging_limits l WHERE l.portfolio_id = m.portfolio_id) IS NOT NULL
        ORDER BY m.portfolio_id
    LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended('sendonce messaging limit ' || portfolio, 0));
        SELECT count(*) INTO asking
        FROM unnest(numbers) AS u (number) JOIN messaging_limits m ON m.phone_number_id = u.number
        WHERE m.portfolio_id = portfolio;
        SELECT g.counted + g.admitted INTO bound FROM messaging_usage g WHERE g.portfolio_id = portfolio;
        IF bound + asking <= cap THEN
            UPDATE messaging_usage g SET admitted = g.admitted + asking WHERE g.portfolio_id = portfolio;
            RETURN QUERY
                SELECT u.id, true, NULL::timestamptz
                FROM unnest(ids, numbers) AS u (id, number) JOIN messaging_limits m ON m.phone_number_id = u.number
                WHERE m.portfolio_id = portfolio;
            CONTINUE;
        END IF;
        used := 0;
        joined := 0;
        FOR decided IN
            WITH recent AS MATERIALIZED (SELECT * FROM messaging_window(portfolio, window_seconds)),
            counted AS MATERIALIZED (SELECT count(*)::integer AS used FROM recent),
            -- Read only when a row must wait.
            times AS MATERIALIZED (SELECT array_agg(r.last_at ORDER BY r.last_at) AS times FROM recent r),
            candidates AS (
                SELECT u.id, u.phone, u.ord, r.phone_number IS NOT NULL AS known
                FROM unnest(ids, phones, numbers) WITH ORDINALITY AS u (id, phone, number, ord)
                JOIN messaging_limits m ON m.phone_number_id = u.number
                LEFT JOIN recent r ON r.phone_number = u.phone
                WHERE m.portfolio_id = portfolio
            ),
            places AS (
                SELECT c.phone, row_number() OVER (ORDER BY min(c.ord)) AS place
                FROM candidates c WHERE NOT c.known GROUP BY c.phone
            )
            SELECT c.id, c.known, c.known OR p.place <= cap - k.used AS fits, k.used,
                   CASE WHEN c.known OR p.place <= cap - k.used THEN NULL
                        ELSE messaging_room_at(p.place, cap, (SELECT t.times FROM times t), window_seconds) END AS at
            FROM candidates c LEFT JOIN places p ON p.phone = c.phone CROSS JOIN counted k
        LOOP
            id := decided.id;
            admitted := decided.fits;
            wait_until := decided.at;
            RETURN NEXT;
            used := decided.used;
            joined := joined + (decided.fits AND NOT decided.known)::integer;
        END LOOP;
        INSERT INTO messaging_usage AS g (portfolio_id, counted, counted_at, admitted)
        VALUES (portfolio, used, now(), joined)
        ON CONFLICT (portfolio_id) DO UPDATE SET counted = excluded.counted, counted_at = excluded.counted_at,
                                                 admitted = excluded.admitted;
    END LOOP;
END
$$;

-- Before a campaign's rows are enqueued (create, resume, enqueue, retry-failed): the `ready` rows beyond the
-- room left wait for their place, behind the rows already waiting for the limit, and get no SQS message until
-- then (a row a claim took meanwhile is left alone: the UPDATEs re-check `ready` on the row they lock). Returns how many of the campaign's rows now wait, and when the first and the last of them find room.
CREATE FUNCTION place_in_messaging_line(campaign uuid, window_seconds float8)
RETURNS TABLE (waiting integer, first_room timestamptz, last_room timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    portfolio text;
    cap integer;
BEGIN
    SELECT m.portfolio_id, m.max_recipients INTO portfolio, cap
    FROM campaigns c JOIN messaging_limits m ON m.phone_number_id = c.phone_number_id
    WHERE c.id = campaign;
    IF cap IS NULL THEN
        RETURN QUERY SELECT 0, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('sendonce messaging limit ' || portfolio, 0));
    RETURN QUERY
        WITH recent AS MATERIALIZED (SELECT * FROM messaging_window(portfolio, window_seconds)),
        window_state AS (SELECT array_agg(r.last_at ORDER BY r.last_at) AS times, count(*)::integer AS used
                         FROM recent r),
        ahead AS (
            SELECT count(*)::integer AS n
            FROM send_queue q
            JOIN campaigns c ON c.id = q.campaign_id
            JOIN messaging_limits m ON m.phone_number_id = c.phone_number_id
            WHERE q.wait_until > now() AND q.wait_reason = 'messaging limit' AND q.status = 'ready'
              AND m.portfolio_id = portfolio AND q.campaign_id <> campaign
        ),
        candidates AS (
            SELECT q.id, row_number() OVER (ORDER BY q.id) AS place
            FROM send_queue q
            WHERE q.campaign_id = campaign AND q.status = 'ready' AND q.whatsapp_message_id IS NULL
              AND (q.wait_until IS NULL OR q.wait_until <= now() OR q.wait_reason = 'messaging limit')
              AND NOT EXISTS (SELECT 1 FROM recent r WHERE r.phone_number = q.phone_number)
        ),
        placed AS (
            UPDATE send_queue q
            SET wait_until = messaging_room_at(a.n + c.place, cap, w.times, window_seconds),
                wait_reason = 'messaging limit', updated_at = now()
            FROM candidates c CROSS JOIN ahead a CROSS JOIN window_state w
            WHERE q.id = c.id AND a.n + c.place > cap - w.used AND q.status = 'ready'
            RETURNING q.wait_until
        ),
        released AS (
            UPDATE send_queue q
            SET wait_until = NULL, wait_reason = NULL, updated_at = now()
            FROM candidates c CROSS JOIN ahead a CROSS JOIN window_state w
            WHERE q.id = c.id AND a.n + c.place <= cap - w.used AND q.wait_until IS NOT NULL AND q.status = 'ready'
            RETURNING q.id
        )
        SELECT count(*)::integer, min(p.wait_until), max(p.wait_until) FROM placed p;
END
$$;
