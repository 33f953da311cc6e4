"""Kubernetes deployment of mvgen: the Helm chart (mvgen/) and its offline checks (chart_check.py)."""
