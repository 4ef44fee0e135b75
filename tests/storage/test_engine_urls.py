"""A URL whose dialect or driver SQLAlchemy cannot load is refused at ``SQLStorage(...)`` with the URL to use."""

from __future__ import annotations

import importlib.util

import pytest

from flask_usage_otel import SQLStorage


@pytest.mark.parametrize(
    ("given", "use"),
    [
        ("postgres://app:pw-secret@db.example/shop", "postgresql+psycopg://app:***@db.example/shop"),
        ("postgres+psycopg://app@db.example/shop", "postgresql+psycopg://app@db.example/shop"),
    ],
)
def test_postgres_scheme_names_the_url_to_use(given: str, use: str) -> None:
    with pytest.raises(ValueError, match="SQLAlchemy cannot load 'postgres") as caught:
        SQLStorage(given)
    assert f"use {use!r}" in str(caught.value)
    assert "pw-secret" not in str(caught.value)


@pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None, reason="mysqlclient is installed: mysql:// works")
def test_mysql_without_a_driver_names_pymysql() -> None:
    with pytest.raises(ValueError, match=r"SQLAlchemy cannot load .mysql. .No module named 'MySQLdb'.") as caught:
        SQLStorage("mysql://root:pw-secret@127.0.0.1/test")
    assert "use 'mysql+pymysql://root:***@127.0.0.1/test'" in str(caught.value)
    assert "pw-secret" not in str(caught.value)


def test_unknown_scheme_is_refused_plainly() -> None:
    with pytest.raises(ValueError, match=r"SQLAlchemy cannot load .postgress. .*: check the URL's scheme"):
        SQLStorage("postgress://app@db/shop")
