"""Fault-injection and property tests for leanset's reliability promises (README: Guarantees)."""
