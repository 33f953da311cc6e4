"""`mvgen`, the command line (main.py): `generate` runs the pipeline in this process
(generate.py); `submit`, `jobs`, `status` and `cancel` talk to a gateway (remote.py). Both show
progress the same way (progress.py); the command runs under a supervisor (supervisor.py).
"""
