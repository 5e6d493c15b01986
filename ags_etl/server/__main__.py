"""``python -m ags_etl.server [-v] DIR [options]`` = ``ags-etl [-v] serve DIR [options]``."""

from __future__ import annotations

import sys

from ags_etl.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    verbosity = [a for a in argv if a in ("-v", "-vv", "--verbose")]
    rest = [a for a in argv if a not in ("-v", "-vv", "--verbose")]
    main([*verbosity, "serve", *rest], prog_name="ags-etl")
