"""The chaos run's job, ``podcron_chaosjobs.ledger:tick``: one ledger line per started tick."""
