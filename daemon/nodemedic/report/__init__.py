"""Reporters: what the operator sees (journal entries, systemd status, D-Bus signals, metrics),
each one implementing engine/reporting.py's Reporter, assembled in reporters.py."""
