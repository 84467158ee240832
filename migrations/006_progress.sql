-- When a campaign's counters last moved (sent, failed or cancelled), written by recompute_counters: a running
-- campaign with rows pending whose counters have not moved for STALLED_AFTER_SECONDS is reported as stalled
-- (the CampaignsWithoutProgress metric, and its alarm).
ALTER TABLE campaigns ADD COLUMN progress_at timestamptz;
