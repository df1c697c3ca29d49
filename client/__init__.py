"""nullopsctl: the NullOps command-line client for CI jobs (standard library only)."""
