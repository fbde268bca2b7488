"""What a running step holds and shows: shard leases, heartbeats, progress lines."""
