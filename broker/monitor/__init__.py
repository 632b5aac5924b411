"""Monitoring: what the daemon's health check and Prometheus metrics read from the store."""
