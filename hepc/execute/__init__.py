"""The executor: a driver that owns the graph, leases, commits and records, and backends that run bodies."""
