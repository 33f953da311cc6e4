"""`python -m gateway.server`: the public gateway, until SIGTERM."""

from gateway.server.app import main

main()
