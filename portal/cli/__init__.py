"""The ``portal`` command: the operator's commands (run, worker, db, demo, config) and the customer's
(login, clusters, jobs), which speak to a portal over HTTP only."""
