-- Scheduled campaigns: created `scheduled` with the time to start (`start_at`); reset_stuck starts them (status
-- `running`, rows enqueued) once that time has come. Until then nothing is enqueued, and cancel cancels them.
ALTER TABLE campaigns ADD COLUMN start_at timestamptz;
