"""One-shot operator flows built on the engine, safety module and probes: repoint, join."""
