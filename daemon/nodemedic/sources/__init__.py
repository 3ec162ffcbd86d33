"""Sources: turn the outside world (journal, systemd units, paths) into small immutable events."""
