"""Deterministic sample data shaped like the lender's loan history."""
