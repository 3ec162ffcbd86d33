"""Repairs: the only code besides reporters that changes the node."""
