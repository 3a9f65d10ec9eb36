"""Training progress read from a job's own output, for jobs that do not call the reporter."""
