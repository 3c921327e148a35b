"""The Prefect flows users run, and the `mmedpo` command (flows/cli.py)."""

import os

from flows.server import configure, tie_temporary_server

# Prefect reads its settings when it is imported, so this must precede every flow module. A
# run started here has no business phoning home, and where there is no network the attempt
# logs an ERROR line a newcomer would take for a failure. A user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
configure()
tie_temporary_server()
