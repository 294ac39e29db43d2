"""The operators' web dashboard: one page, its static assets, and the identity it shows."""
