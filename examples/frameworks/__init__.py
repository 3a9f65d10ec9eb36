"""Unmodified framework jobs (no trainwarden import): a Hugging Face Trainer job and a
Lightning job, tiny enough for a CPU, that the tests kill, hang and resume."""
