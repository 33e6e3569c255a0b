"""Features: Feast store access (apply, materialise, online reads) and the Redis online store."""
