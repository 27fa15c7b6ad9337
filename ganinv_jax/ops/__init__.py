"""Low-level array ops shared by models and losses (no Flax modules, no I/O)."""
