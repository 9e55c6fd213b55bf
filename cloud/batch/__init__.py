"""Batch operations (one command to many devices) and schedules (cron and one-shot runs of a
command or a batch): models, the durable store, the runner and the scheduler."""
