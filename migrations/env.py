"""Alembic environment: runs against the URL that core.migrate passes in."""

from alembic import context

import core.models  # noqa: F401  (registers every table on Base.metadata)
from core.db import Base, make_sync_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "core.migrate sets sqlalchemy.url"
    engine = make_sync_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
