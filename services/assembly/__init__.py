"""The assembly stage."""
