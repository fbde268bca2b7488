"""Vector indexes per shard, search over them, and what they report."""
