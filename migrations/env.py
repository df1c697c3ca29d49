import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Interpret the config file for Python logging.
# This line sets up loggers basically. Loggers that exist already stay on: run in-process (the
# tests' upgrade), the default disabled the app's own, which then logged nothing at all.
fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger('alembic.env')


def get_engine():
    try:
        # this works with Flask-SQLAlchemy<3 and Alchemical
        return current_app.extensions['migrate'].db.engine
    except (TypeError, AttributeError):
        # this works with Flask-SQLAlchemy>=3
        return current_app.extensions['migrate'].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace(
            '%', '%%')
    except AttributeError:
        return str(get_engine().url).replace('%', '%%')


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option('sqlalchemy.url', get_engine_url())
target_db = current_app.extensions['migrate'].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, 'metadatas'):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url, target_metadata=get_metadata(), literal_binds=True
    )

    with context.begin_transaction():
        context.run_migrations()


def render_item(type_, obj, autogen_context):
    """Migrations never import app code: render our UTCDateTime as the plain DateTime it
    stores (naive UTC)."""
    if type_ == "type" and type(obj).__name__ == "UTCDateTime":
        return "sa.DateTime()"
    return False


def _sqlite_foreign_keys(connection, enforced):
    """SQLite alters a table by rebuilding it (batch mode: copy, drop, rename), and with foreign
    keys enforced the drop runs ON DELETE CASCADE / SET NULL on every row that refers to the
    table: rebuilding deployments emptied deployment_events. Alembic's batch documentation asks
    for enforcement off meanwhile. The pragma is ignored inside a transaction, so it is set
    outside the migrations' one; the app's connections (app/extensions.py) turn it on only when
    they connect, so this one, back in the pool afterwards, must have it on again."""
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")
    connection.commit()


def _sqlite_broken_references(connection):
    return set(connection.exec_driver_sql("PRAGMA foreign_key_check").all())


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, 'autogenerate', False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info('No changes in schema detected.')

    conf_args = current_app.extensions['migrate'].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    conf_args.setdefault("render_item", render_item)
    conf_args.setdefault("compare_type", True)

    connectable = get_engine()

    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=get_metadata(),
            **conf_args
        )

        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            broken_before = _sqlite_broken_references(connection)
            _sqlite_foreign_keys(connection, False)
        try:
            with context.begin_transaction():
                context.run_migrations()
            if sqlite:
                # What enforcement would have refused while it was off fails the command loudly
                # (after the fact: Alembic commits each migration on its own on SQLite).
                broken = _sqlite_broken_references(connection) - broken_before
                if broken:
                    raise RuntimeError("the migrations left rows whose foreign keys point nowhere "
                                       f"(table, rowid, referred table, key): {sorted(broken)[:10]}")
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, True)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
