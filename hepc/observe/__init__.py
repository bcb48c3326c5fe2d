"""Watching a store: what it is doing now (status) and how fast its steps run (measured throughput, estimates)."""
