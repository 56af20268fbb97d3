"""The chaos run: operators under injected faults, a ledger of started ticks, and its checker.

docs/testing.md ("The chaos run") says how to run it and how to read its RESULT line.
"""
