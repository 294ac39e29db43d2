"""Usage analytics read from ClickHouse: usage, sharing, alerts, decisions, dormant feeds."""
