"""The broker daemon: the only process that opens the store, the keys and the secrets."""
