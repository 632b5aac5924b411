"""The API's response records, declared once: the daemon builds them from domain objects,
the client validates the daemon's JSON into them, the CLI reads their attributes."""
