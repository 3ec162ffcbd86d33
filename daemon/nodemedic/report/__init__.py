"""Reporters: what the operator sees (journal entries, systemd status)."""
