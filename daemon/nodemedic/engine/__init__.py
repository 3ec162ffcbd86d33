"""Remedy engine: one state machine per problem, behind a policy gate."""
