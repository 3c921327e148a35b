"""Prefect's temporary server lives exactly as long as the run that started it.

Without a configured API (``PREFECT_API_URL``) Prefect starts a temporary server (uvicorn) in
a child process and stops it at exit - but not when the run is killed outright, and it waits
only 20 s for it to start, which a loaded machine exceeds. The child is started through
models.lifetime (it gets SIGTERM when this process dies, SIGKILL included), and the startup
wait defaults to ``STARTUP_TIMEOUT_S`` unless the user set Prefect's own setting.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import subprocess
import sys
from typing import Any

from models.lifetime import tied_to_this_process

STARTUP_TIMEOUT_S = 180
STARTUP_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def configure() -> None:
    """Before Prefect is imported: the startup wait (a user's environment wins)."""
    os.environ.setdefault(STARTUP_SETTING, str(STARTUP_TIMEOUT_S))


class _TiedSubprocess:
    """The ``subprocess`` module as Prefect's server module sees it: Popen tied to this process."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 - subprocess's own name
        return subprocess.Popen(tied_to_this_process([str(a) for a in args]), **kwargs)


SERVER_MODULE = "prefect.server.api.server"


def tie_temporary_server() -> None:
    """Every temporary server Prefect starts from this process dies with it. Prefect's server
    module costs seconds to import and most commands never start a server: it is tied when it
    is first imported, not imported here."""
    module = sys.modules.get(SERVER_MODULE)
    if module is not None:
        module.subprocess = _TiedSubprocess()
    elif not any(isinstance(finder, _TieOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TieOnImport())


class _TieOnImport(importlib.abc.MetaPathFinder):
    """Finds Prefect's server module as the other finders do, and ties it once executed."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != SERVER_MODULE:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *_: None)(name, path, target)
            if spec is not None and spec.loader is not None:
                execute = spec.loader.exec_module

                def tied(module: Any) -> None:
                    execute(module)
                    module.subprocess = _TiedSubprocess()

                spec.loader.exec_module = tied  # type: ignore[method-assign]
                return spec
        return None


def run_api_url() -> str | None:
    """The API the current flow run reports to: the configured one, or the temporary server Prefect
    started for this process (None outside a flow run). Worker processes given it as their
    ``PREFECT_API_URL`` report their runs to the same server instead of each starting their own."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return None if context is None else str(context.client.api_url)
