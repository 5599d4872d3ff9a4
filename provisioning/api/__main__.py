"""``python -m provisioning.api [--host H] [--port P]``: the same as ``provision api``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from provisioning.config import load_config
from provisioning.errors import ProvisioningError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provisioning.api", description=__doc__)
    parser.add_argument("--host", default=None, help="address to listen on (default [api] host)")
    parser.add_argument("--port", type=int, default=None, help="port (default [api] port)")
    arguments = parser.parse_args(argv)
    from provisioning.api.server import serve

    try:
        serve(load_config(), arguments.host, arguments.port)
    except ProvisioningError as error:
        sys.stderr.write(f"error {error.code}: {error}\n")
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
