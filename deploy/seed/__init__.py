"""The deterministic demo city: departments, feeds (cameras and sensors) and access traffic.

Modelled on Lanzhou, the reference case (57,000 camera channels, 24 departments sharing).

- ``deploy.seed.writer.write_demo_city(out_dir, ...)`` writes everything to a directory;
- ``deploy.seed.feeds.generate_feeds(cameras, sensors, seed)`` gives the features in memory;
- ``deploy.seed.traffic.generate_access_requests(...)`` gives the access-request stream;
- ``deploy.seed.departments.departments()`` gives the 24 departments;
- ``deploy.seed.cli.seed_command`` is ``feedgrid seed`` (also ``python -m deploy.seed``).

Nothing is imported here so that importing the CLI stays cheap.
"""
