"""Where results go: the SQLite record store, the MES webhook outbox, Prometheus metrics."""
