"""Service workers (postgres, redis, s3, vault): each owns start, ready, probe and close, and hands out a
concurrency-safe handle. They depend on the core only, never on each other."""
