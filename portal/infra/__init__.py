"""The portal's plumbing, beneath the domain: database engine and sessions, migrations, the cache (in
process or Redis) and its pipelined connection, wake-ups, logs, Prometheus metrics, the frozen heap."""
