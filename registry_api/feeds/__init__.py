"""The feed registry: cameras and sensors with geospatial and catalog metadata.

* ``models``: the feeds table; ``documents``: row <-> JSON document <-> input shape;
* ``gb28181``: GB/T 28181 codes; ``geodesy``: distances, search boxes, field-of-view polygons;
* ``service``: register / read / patch (If-Match) / retire / search, each write with its
  outbox event; ``bulk`` (+ ``bulk_validation``, ``sqlite_rows``): upsert of many features;
  ``heartbeats``: liveness reports, checked and produced to Kafka; ``liveness``: the workers'
  transitions written to the registry (its one status writer); ``duplicates``: the
  "one number, one source" report;
* ``spatial``: the in-memory index every list and search is answered from;
* ``routes``: the HTTP endpoints.
"""
