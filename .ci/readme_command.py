"""Print one of README.md's commands, so that CI runs what the README says and the two cannot drift.

``python .ci/readme_command.py "Run it"`` prints the first ``bash`` code block after the paragraph that starts
with ``**Run it**``; ``"Test it"`` the test command. Exit 1, naming what is missing, when there is no such block.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

log = logging.getLogger("cxr.ci.readme")

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


class ReadmeError(Exception):
    pass


def command_after(text: str, label: str) -> str:
    """The first bash block after the line that starts with ``**label**``."""
    start = re.search(rf"^\*\*{re.escape(label)}\*\*", text, re.MULTILINE)
    if start is None:
        raise ReadmeError(f"no paragraph starting with **{label}**")
    block = _BLOCK.search(text, start.end())
    if block is None:
        raise ReadmeError(f"no ```bash block after **{label}**")
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    # one line, so that `eval` runs exactly it and a later edit cannot slip a second command past CI's reading
    if len(lines) != 1:
        raise ReadmeError(f"the block after **{label}** has {len(lines)} lines, not one command")
    return lines[0].strip()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("label", help='the bold words before the block, e.g. "Run it"')
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    try:
        print(command_after(args.readme.read_text(encoding="utf-8"), args.label))
    except ReadmeError as exc:
        log.error("%s: %s", args.readme, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
