"""The reliability suite: nothing is lost and nothing gets in (faults, hostile input, load)."""
