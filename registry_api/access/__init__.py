"""Access to other departments' feeds: plain functions over a session.

``requests``     asking for access (the policy decides feed by feed), the request as shown
``inbox``        reading requests: the requester's list, the owner's inbox, single requests
``decisions``    the owner approves or denies pending feeds
``grants``       reading and revoking grants; a grant's retrieval token and URLs
``visibility``   who may see which requests and grants (the one rule for every read)
``records``      what the writes share: table handles, ids, grant rows, access-event payloads
``policy``       the sharing policy; ``feed_views`` the feed facts it reads
``revocation``   revocations known to this process; ``retrieval`` the media URLs

Each write commits its rows, its audit-chain links and its outbox events in one transaction.
"""
