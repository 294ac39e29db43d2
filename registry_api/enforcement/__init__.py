"""A grant's life after it is issued, enforced: the sessions it opened on media servers and
the MQTT broker are recorded from the hooks and retrievals, and cut through each server's
control API when the grant is revoked or ends."""
