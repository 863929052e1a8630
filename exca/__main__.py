"""``python -m exca`` (or ``exca``): the command line of exca.ops."""

from .ops.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
