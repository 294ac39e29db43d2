"""The pieces of the in-memory feed index (:class:`registry_api.feeds.spatial.FeedIndex`).

``records``    what the index keeps of a feed (FeedRecord), its database columns, vocabularies
``queries``    IndexQuery, Matches, IndexPage and the page cursor
``grid``       the sorted-cell grid maths
``columns``    per-feed arrays built from records (Columns, IndexPart), gathered for reports
``snapshot``   an immutable, id-sorted snapshot answering queries; merging into a new one
``loader``     the snapshot of every feed in the registry database
``adapter``    records from feed documents (feed-metadata events): the follower's entry
``proximity``  close pairs of points (the duplicate finder's candidates)
"""
