"""What a store needs, without the training stack, so that a sweep's own process can use it:
`lock` (file locks beside SQLite databases, advisory locks in PostgreSQL), `optuna_trial` (a trial's
Optuna storage and bookkeeping) and `check` (a tracking store checked before any work)."""
