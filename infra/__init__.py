"""Shared infrastructure below the API and the workers (and above ``schemas``).

``kafka_admin``            topic creation and broker reachability
``clickhouse``             the analytics store's client (chdb embedded or a server)
``clickhouse_migrations``  ``feedgrid migrate`` for the DDL in ``schemas/clickhouse``
``structured_logging``     JSON or console logs, the same in every process

``registry_api`` and ``streams`` both import from here and never from each other.
"""
