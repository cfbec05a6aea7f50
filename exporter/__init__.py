"""Prometheus metrics of the reconciler and the HTTP endpoint that serves them."""
