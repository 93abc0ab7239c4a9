"""Market data storage."""
