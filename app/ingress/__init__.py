"""The ingress: stable service URLs through Caddy, configured only through its admin API.

routes.py derives the route table from the database, caddy.py talks to Caddy's admin API,
pages.py renders the small pages Caddy answers with (offline, not ready, unknown, landing),
sync.py keeps Caddy equal to the table (a full sync at start and after Caddy comes back,
only the changed deployments' hosts otherwise, the whole table checked every 30 s). The active
controller runs it.
"""
