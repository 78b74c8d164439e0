"""asynchub."""
