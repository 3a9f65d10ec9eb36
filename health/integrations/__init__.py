"""One-line integrations of the reporter into training frameworks (optional imports)."""
