"""One-shot operator flows built on the engine, safety module and probes: repoint, join."""

# Exit codes shared by the flows (argparse's usage errors are 2).
EXIT_OK = 0
EXIT_FAILED = 1  # the flow ran and failed; a repoint was rolled back, a join used its budget
EXIT_REFUSED = 5  # refused before changing anything; the message says why
EXIT_NEEDS_OPERATOR = 6  # failed, and the rollback could not undo everything
