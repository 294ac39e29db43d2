"""The stream side of FeedGrid: Faust agents from Kafka into ClickHouse.

``app``          the worker: embedded in the API process, or ``streams.worker`` (scale mode)
``context``      the Faust app, its topics and tables, shared by the agents
``agents/``      feed metadata, access events, requester activity, heartbeats; batching
``sink``         batched, deduplicated inserts; offsets are committed only after them
``rules``        the alert rules, pure functions over event time
``migrations``   ``feedgrid migrate`` for the DDL in ``schemas/clickhouse``
``tuning``       the FEEDGRID_STREAM_* knobs
"""
