"""What the Python checks of the system tests share: the settings the Rust test that
runs a script passes it, and how long the read side may take to follow a change.

The scripts run as `python tests/python/test_<name>.py`, so this module imports from
the script's own directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The read side is a projection of the event log: a change shows there shortly after
# it is made (a tool call returns, a turn ends), not at once.
READ_TIMEOUT_SECS = 15


def env(name: str) -> str:
    """The setting `name`; exits, naming the Rust test that runs the script
    (tests/tests/<name>.rs for test_<name>.py), when it is not set."""
    value = os.environ.get(name)
    if not value:
        runner = Path(sys.argv[0]).stem.removeprefix("test_")
        sys.exit(f"{name} is not set; run this through tests/tests/{runner}.rs")
    return value
