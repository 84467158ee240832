"""All SQL, as constants, one module per concern, with the thin functions that run them.

- `sending`: the sender's claim and finalize (reset_stuck finalizes with journal results too)
- `campaigns`: create (one transaction with COPY) and the ready rows to enqueue
- `control`: the counters (one definition), pause, resume, cancel, retry-failed, recompute
- `recovery`: stuck rows, dead letters
- `statuses`: webhook statuses, reconciliation, opt-outs
"""
