"""Runs real Flask-Track-Usage 2.0.0 (under the ``.venv-ftu`` interpreter) for the comparison tests.

``python ftu_runner.py ACTION DB_URL TABLE`` prints JSON on stdout:

- ``fill``: serve ``scenario.REQUESTS`` with ``SQLStorage(engine, table_name=TABLE)`` (which
  creates the table when missing); prints nothing useful;
- ``fill_long``: the same with ``scenario.LONG_REQUESTS``;
- ``create``: only make the storage, which creates the table;
- ``read``: ``SQLStorage(...).get_usage(limit=1000)``, each value typed (``scenario.encode``);
- ``dicts``: serve ``scenario.REQUESTS`` with a callable storage and print the dict it received
  for each request.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario  # found through the path set just above
import sqlalchemy as sa
from flask_track_usage import TrackUsage
from flask_track_usage.storage.sql import SQLStorage


def main(action: str, url: str, table: str) -> None:
    engine = sa.create_engine(url)
    if action in ("fill", "fill_long"):
        app = scenario.build_app()
        TrackUsage(app, [SQLStorage(engine=engine, table_name=table)])
        scenario.run(app, scenario.REQUESTS if action == "fill" else scenario.LONG_REQUESTS)
        print("[]")
    elif action == "create":
        SQLStorage(engine=engine, table_name=table)
        print("[]")
    elif action == "read":
        rows = SQLStorage(engine=engine, table_name=table).get_usage(limit=1000)
        print(scenario.dumps(rows))
    elif action == "dicts":
        received: list[dict[str, Any]] = []

        def keep(data: dict[str, Any]) -> None:
            data = dict(data)
            data["user_agent"] = str(data["user_agent"])
            received.append(data)

        app = scenario.build_app()
        TrackUsage(app, [keep])
        scenario.run(app, scenario.REQUESTS)
        print(scenario.dumps(received))
    else:
        raise SystemExit(f"unknown action {action!r}")
    engine.dispose()


if __name__ == "__main__":
    main(*sys.argv[1:])
