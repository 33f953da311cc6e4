"""The scripting stage."""
