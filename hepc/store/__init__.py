"""The store: immutable objects by key, leases, verification and its index, checkpoint digests, gc, bounded I/O."""
