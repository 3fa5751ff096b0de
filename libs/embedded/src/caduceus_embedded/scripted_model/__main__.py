"""`python -m caduceus_embedded.scripted_model --port P [--scenarios FILE] [--host 127.0.0.1]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from caduceus_embedded.ports import PortBusy, ensure_free
from caduceus_embedded.scripted_model.scenarios import (
    ScenarioError,
    default_scenarios_path,
    load_scenarios,
)
from caduceus_embedded.scripted_model.server import create_app


def main(argv: list[str] | None = None) -> int:
    """Serve the scenarios until SIGINT/SIGTERM; exit 2 with a message when the file or port is unusable."""
    parser = argparse.ArgumentParser(prog="python -m caduceus_embedded.scripted_model",
                                     description="OpenAI-compatible scripted model for the offline demo and tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--scenarios", type=Path, default=default_scenarios_path(),
                        help="scenario YAML file (default: the packaged demo scenarios)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        scenarios = load_scenarios(args.scenarios)
        if args.host in ("127.0.0.1", "localhost"):
            ensure_free(args.port, "the scripted model", "--port")
    except (ScenarioError, PortBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("caduceus.scripted_model").info(
        "serving %d scenarios from %s on http://%s:%d/v1", len(scenarios), args.scenarios, args.host, args.port)
    uvicorn.run(create_app(scenarios), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
