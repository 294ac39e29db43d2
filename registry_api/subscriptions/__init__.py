"""Owners told, deadlines kept: webhook subscriptions, their deliveries, the deadline keeper."""
