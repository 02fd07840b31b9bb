"""oneiric-memory."""
