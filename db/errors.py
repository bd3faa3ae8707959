"""The one base type for "this command cannot run" conditions, and the exit code they mean.

Library code raises a :class:`CannotRun` (or a subclass) with a message that says what is wrong and what fixes
it; :func:`db.clitools.run_command` turns it into the exit code and one log line, so every command reports
such conditions the same way.
"""

from __future__ import annotations

import logging

EXIT_CANNOT_RUN = 2


class CannotRun(Exception):
    """A condition that stops a command before or while it works (no model, an old schema, a missing device,
    file or folder, unusable data, ...). ``exit_code`` and ``log_level`` say how the command reports it."""

    exit_code: int = EXIT_CANNOT_RUN
    log_level: int = logging.ERROR
