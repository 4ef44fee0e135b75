"""How many times the writer waits for the database per batch, counted on the wire.

A database in another zone adds its round-trip time to every wait: at 10 ms, five waits per
500-row batch cap a process near 8k rows/s, two let it write more than 15k. The tracked app's
storage talks to a real server through the TCP proxy, which counts each time the client speaks
after the server answered; the batches are counted by their ids in ``<table>_batches``.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.integration.test_writer_faults import FAST, SERVERS, Rig, rig
from tests.storage.conftest import require_server

__all__ = ["rig"]  # the fixture, shared with the fault tests (it takes this module's `server`)

pytestmark = pytest.mark.integration

# Most waits per batch. PostgreSQL: the COPY, the batch id and COMMIT in one query, then the rows.
# MariaDB (PyMySQL): BEGIN, the rows' INSERT, the batch id's and COMMIT in one query (one wait; the
# pool gives the connection back without a ROLLBACK), through either of its URL schemes.
MOST_ROUND_TRIPS = {"postgresql": 2, "mysql+pymysql": 1, "mariadb+pymysql": 1}


@pytest.fixture(params=list(MOST_ROUND_TRIPS))
def server(request: pytest.FixtureRequest) -> tuple[str, str, int]:
    """The fault tests' servers, MariaDB through both schemes (SQLAlchemy's dialect is ``mysql`` for one,
    ``mariadb`` for the other)."""
    name = request.param
    database = "postgresql" if name == "postgresql" else "mariadb"
    url, port = SERVERS[database]
    require_server(database, port)
    if database == "mariadb":
        url = sa.make_url(url).set(drivername=name).render_as_string(hide_password=False)
    return name, url, port


def test_waits_for_the_database_per_batch_counted_on_the_wire(rig: Rig, server: tuple[str, str, int]) -> None:
    assert rig.proxy is not None
    rig.send(20)  # the first batch looks at the table, creates it and prunes old batch ids
    assert rig.writer.flush(20)

    def batches() -> int:
        with rig.direct.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(rig.storage.batches)).scalar_one())

    before, rig.proxy.round_trips = batches(), 0
    rig.send(200)
    assert rig.writer.flush(20)
    written, round_trips = batches() - before, rig.proxy.round_trips
    rig.assert_every_request_accounted_for()
    assert rig.writer.rows_dropped == 0
    assert rig.writer.write_errors == 0
    assert written >= 200 // FAST["TRACK_USAGE_BATCH_SIZE"]
    name = server[0]
    print(f"\n{name}: {round_trips} round trips for {written} batches ({round_trips / written:.2f} each)")
    assert round_trips <= MOST_ROUND_TRIPS[name] * written
