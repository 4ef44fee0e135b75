"""Deleting usage rows: ``prune`` (rows older than a time) and ``forget`` (an erasure request for a user
or an address), in chunks of a bounded number of rows per transaction."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..columns import COLUMN_WIDTHS
from ..privacy import Anonymizer, ErasureRefused, client_ip, truncate_address
from ..summarization import sumRemote
from .queries import chain_entry, check_positive_int, naive_utc
from .sql_rows import clean_text

if TYPE_CHECKING:
    from .summaries import Summaries
    from .table import TableState


class UsageErasure:
    """The deleting half of :class:`~flask_usage_otel.storage.sql.SQLStorage` (which provides what is declared here)."""

    table: sa.Table
    summaries: Summaries | None
    _app: Any

    if TYPE_CHECKING:

        @property
        def engine(self) -> sa.Engine: ...

        def _table_state(self) -> TableState: ...

        def prune_batch_ids(self) -> int: ...

    def prune(self, older_than: timedelta, *, chunk_size: int = 10_000) -> int:
        """Delete rows older than ``older_than`` (from now), ``chunk_size`` rows per transaction;
        returns how many were deleted."""
        if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
            raise ValueError(f"older_than must be a positive timedelta, got {older_than!r}")
        cutoff = naive_utc(datetime.now(timezone.utc) - older_than)
        deleted = self._delete_in_chunks(self.table.c.datetime < cutoff, chunk_size)
        self.prune_batch_ids()  # the ids of written batches are kept a day, whatever the rows' retention
        return deleted

    def forget(
        self,
        username: str | None = None,
        remote_addr: str | None = None,
        *,
        anonymizer: Anonymizer | None = None,
        chunk_size: int = 10_000,
    ) -> int:
        """Delete every row of a user and/or a client address (an erasure request); returns how many.

        The values are transformed as they were when the rows were written, so they match:
        the user name cut to the column's width; the address with the app's anonymization, in
        every spelling of the same address (``::ffff:192.0.2.1`` is ``192.0.2.1``, IPv6 in either
        case, compressed or not, with a port), matched in ``remote_addr`` and as an entry of
        ``xforwardedfor``. The summary rows keyed by the address (``sumRemote``'s, every period)
        are deleted too; no summary is keyed by the user.

        :param anonymizer: the ``Anonymizer`` the rows were written with; by default the one of
            the app the storage is bound to (``TrackUsage(app, storage)``).
        :raises ErasureRefused: the rows keep truncated addresses, which cannot single out a person,
            or hashed ones and no key is at hand (nothing is deleted).
        """
        if username is None and remote_addr is None:
            raise ValueError("forget needs a username, a remote_addr or both")
        check_positive_int("chunk_size", chunk_size)
        state = self._table_state()
        table = self.table
        conditions: list[sa.ColumnElement[bool]] = []
        addresses: list[str] = []
        prefixes: list[str] = []
        if remote_addr is not None:
            # First: a refusal must come before anything is deleted.
            if anonymizer is None:
                anonymizer = self._bound_anonymizer()
            addresses = [clean_text(a, None) or "" for a in stored_addresses(remote_addr, anonymizer)]
            # Hashes are of the address without its port; a raw entry keeps the port it was sent with.
            prefixes = port_prefixes(remote_addr) if anonymizer is None else []
            width = state.widths.get("remote_addr", COLUMN_WIDTHS["remote_addr"])
            conditions.append(_address_is(table.c.remote_addr, [a[:width] for a in addresses], prefixes))
            if "xforwardedfor" in state.columns:
                column = table.c.xforwardedfor
                conditions.extend(chain_entry(column, a) for a in addresses)
                conditions.extend(_chain_entry_starts(column, prefix) for prefix in prefixes)
        if username is not None:
            conditions.append(table.c.username == clean_text(username, state.widths.get("username")))
        deleted = self._delete_in_chunks(sa.or_(*conditions), chunk_size)
        if addresses and self.summaries is not None:
            self.summaries.forget_keys(
                self.engine,
                sumRemote,
                lambda key: _address_is(key, [a[: key.type.length] for a in addresses], prefixes),
            )
        return deleted

    def _bound_anonymizer(self) -> Anonymizer | None:
        """The anonymizer of the app this storage writes for; without one, refuse when the rows
        hold hashed addresses (a raw address would silently match none of them)."""
        app = self._app
        extension = app.extensions.get("track_usage") if app is not None else None
        if extension is not None:
            try:
                return extension.anonymizer_for(app)  # type: ignore[no-any-return]
            except LookupError:  # the app is no longer tracked by it
                pass
        with self.engine.connect() as conn:
            hashed = conn.execute(sa.select(self.table.c.id).where(self.table.c.remote_addr.like("h:%")).limit(1))
            if hashed.first() is not None:
                raise ErasureRefused(
                    "rows hold hashed addresses (TRACK_USAGE_ANONYMIZE_IP = 'hash') and this storage is bound to "
                    "no tracked app, so the address cannot be hashed as they were; nothing was deleted. Call "
                    "TrackUsage.forget in the app, or pass anonymizer=Anonymizer('hash', key)."
                )
        return None

    def _delete_in_chunks(self, condition: sa.ColumnElement[bool], chunk_size: int) -> int:
        check_positive_int("chunk_size", chunk_size)
        self._table_state()
        engine = self.engine
        table = self.table
        ids = sa.select(table.c.id).where(condition).limit(chunk_size)
        if engine.dialect.name in ("mysql", "mariadb"):
            # MariaDB and MySQL refuse LIMIT in an IN subquery, but take it in a derived table, which
            # they materialise: DELETE FROM t USING t, (SELECT id ... LIMIT n) AS chunk WHERE t.id =
            # chunk.id. Not DELETE ... LIMIT: SQLAlchemy renders it only from 2.0.37 on, and then only
            # for the option named after the URL's dialect (mysql_limit is ignored on mariadb://).
            chunk = ids.subquery("chunk")
            statement = sa.delete(table).where(table.c.id == chunk.c.id)
        else:
            statement = sa.delete(table).where(table.c.id.in_(ids.scalar_subquery()))
        deleted = 0
        while True:
            with engine.begin() as conn:
                count = conn.execute(statement).rowcount
            deleted += count
            if count < chunk_size:
                return deleted


def _like_text(text: str) -> str:
    """``text`` for a ``LIKE`` pattern with ``!`` as the escape character (a backslash means
    different things in MySQL's string literals)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _address_is(column: sa.ColumnElement[Any], addresses: list[str], prefixes: list[str]) -> sa.ColumnElement[bool]:
    """``column`` holds one of ``addresses``, or an address with a port (one of ``prefixes`` and more)."""
    return sa.or_(column.in_(addresses), *(column.like(_like_text(p) + "%", escape="!") for p in prefixes))


def _chain_entry_starts(column: sa.ColumnElement[Any], prefix: str) -> sa.ColumnElement[bool]:
    """``column`` (an ``X-Forwarded-For`` chain) has an entry starting with ``prefix`` (``192.0.2.1:``)."""
    escaped = _like_text(prefix)
    patterns = (f"{escaped}%", f"%, {escaped}%", f"%,{escaped}%")
    return sa.or_(*(column.like(pattern, escape="!") for pattern in patterns))


# -- what the rows of an address hold -----------------------------------------------------


def address_forms(address: str) -> list[str]:
    """The spellings a server or proxy may have given for one client address, the given one first.

    ``2001:DB8::1``, ``2001:db8::1`` and ``2001:db8:0:0:0:0:0:1`` are the same client, and so are
    ``::ffff:192.0.2.1`` and ``192.0.2.1`` (a dual-stack socket): rows were stored under whichever
    the server gave. Spellings with a port (``192.0.2.1:51234``, ``[2001:db8::1]:443``) start
    with one of :func:`port_prefixes`.
    """
    forms = [address]
    ip = client_ip(address)
    if ip is None:
        return forms
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv4Address):
        ips.append(ipaddress.IPv6Address(f"::ffff:{ip}"))
    for one in ips:
        candidates = [str(one)]
        if isinstance(one, ipaddress.IPv6Address):
            groups = one.exploded.split(":")
            candidates += [one.exploded, ":".join(f"{int(group, 16):x}" for group in groups)]
            if one.ipv4_mapped is not None:
                candidates.append(f"::ffff:{one.ipv4_mapped}")
        if one.version == 6:
            candidates += [f"[{candidate}]" for candidate in candidates]  # a proxy's [IPv6] without a port
        for candidate in candidates:
            forms += [c for c in (candidate, candidate.upper()) if c not in forms]
    return forms


def port_prefixes(address: str) -> list[str]:
    """How the spellings of ``address`` start when a port follows (``192.0.2.1:``,
    ``[2001:db8::1]:``), as some gateways write ``X-Forwarded-For`` entries; empty when it is not an address."""
    ip = client_ip(address)
    if ip is None:
        return []
    return [form + ":" if ":" not in form else f"[{form}]:" for form in address_forms(str(ip)) if "[" not in form]


def stored_addresses(address: str, anonymizer: Anonymizer | None) -> list[str]:
    """What the rows of ``address`` hold in ``remote_addr`` (and each ``xforwardedfor`` entry).

    Applies the transformation the rows were written with: none, or the keyed hash.

    :raises ErasureRefused: the rows keep truncated addresses (a /24 or /48 network that
        other clients share), so no value singles this client out.
    """
    address = address.strip()
    if not address:
        raise ErasureRefused("remote_addr is empty")
    if anonymizer is not None and anonymizer.mode == "truncate":
        raise ErasureRefused(
            "rows keep only truncated addresses (TRACK_USAGE_ANONYMIZE_IP = 'truncate'): "
            f"{truncate_address(address)} is a network that other clients share, so erasing by address "
            "would delete other people's rows; nothing was deleted. Erase by username instead: "
            "the truncated address alone does not identify this person."
        )
    forms = address_forms(address)
    if anonymizer is None:
        return forms
    return list(dict.fromkeys(a for a in map(anonymizer.address, forms) if a))
