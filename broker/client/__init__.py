"""The one way the CLI reaches broker state: HTTP/JSON to the daemon."""
