"""telemetry partitioned by day on PostgreSQL; a (station, received_at) index everywhere

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

PostgreSQL: the plain ``telemetry`` table becomes one partitioned by range of ``received_at``
(UTC Unix seconds): a partition per UTC day, ``telemetry_pYYYYMMDD``, and ``telemetry_default``
for rows no day partition takes. Every row is copied over (a rewrite of the table, once), ids
kept; ``id`` becomes BIGINT. No primary or unique key: on a partitioned table either would have
to include ``received_at`` (decision 29). SQLite keeps its table and only gains the index.
"""

import time

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DAY = 86400
#: days of the old table's rows that get a partition of their own, around now; rows outside
#: (a clock far off) go to the DEFAULT partition
_PAST_DAYS, _AHEAD_DAYS = 400, 2

_COLUMNS = "id, station, session, seq, ts, received_at, host, devices, counters"


def _partition(day: int) -> str:
    return "telemetry_p" + time.strftime("%Y%m%d", time.gmtime(day * DAY))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.create_index("ix_telemetry_station_received", "telemetry", ["station", "received_at"])
        return
    bind = op.get_bind()
    op.execute("ALTER TABLE telemetry RENAME TO telemetry_unpartitioned")
    op.execute("ALTER TABLE telemetry_unpartitioned ALTER COLUMN id DROP DEFAULT")
    op.execute("ALTER SEQUENCE telemetry_id_seq OWNED BY NONE")
    # an int4 sequence's maximum becomes int8's
    op.execute("ALTER SEQUENCE telemetry_id_seq AS BIGINT")
    op.execute(
        "CREATE TABLE telemetry ("
        " id BIGINT NOT NULL DEFAULT nextval('telemetry_id_seq'),"
        " station VARCHAR(64) NOT NULL,"
        " session BIGINT NOT NULL,"
        " seq BIGINT NOT NULL,"
        " ts FLOAT NOT NULL,"
        " received_at FLOAT NOT NULL,"
        " host JSON NOT NULL,"
        " devices JSON NOT NULL,"
        " counters JSON NOT NULL"
        ") PARTITION BY RANGE (received_at)"
    )
    op.execute("ALTER SEQUENCE telemetry_id_seq OWNED BY telemetry.id")
    op.execute("CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT")
    op.execute("CREATE INDEX ix_telemetry_station_received ON telemetry (station, received_at)")
    op.execute("CREATE INDEX ix_telemetry_received_brin ON telemetry USING brin (received_at)")
    today = int(time.time() // DAY)
    days = {
        int(day)
        for (day,) in bind.exec_driver_sql(
            "SELECT DISTINCT floor(received_at / 86400) FROM telemetry_unpartitioned"
        )
    }
    days = {d for d in days if today - _PAST_DAYS <= d <= today + _AHEAD_DAYS}
    for day in sorted(days | set(range(today, today + _AHEAD_DAYS + 1))):
        op.execute(
            f"CREATE TABLE {_partition(day)} PARTITION OF telemetry "
            f"FOR VALUES FROM ({day * DAY}) TO ({(day + 1) * DAY})"
        )
    op.execute(f"INSERT INTO telemetry ({_COLUMNS}) SELECT {_COLUMNS} FROM telemetry_unpartitioned")
    op.execute("DROP TABLE telemetry_unpartitioned")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index("ix_telemetry_station_received", "telemetry")
        return
    op.execute("ALTER TABLE telemetry RENAME TO telemetry_partitioned")
    op.execute("ALTER TABLE telemetry_partitioned ALTER COLUMN id DROP DEFAULT")
    op.execute("ALTER SEQUENCE telemetry_id_seq OWNED BY NONE")
    op.execute(
        "CREATE TABLE telemetry ("
        " id BIGINT NOT NULL DEFAULT nextval('telemetry_id_seq') PRIMARY KEY,"
        " station VARCHAR(64) NOT NULL,"
        " session BIGINT NOT NULL,"
        " seq BIGINT NOT NULL,"
        " ts FLOAT NOT NULL,"
        " received_at FLOAT NOT NULL,"
        " host JSON NOT NULL,"
        " devices JSON NOT NULL,"
        " counters JSON NOT NULL,"
        " CONSTRAINT uq_telemetry_key UNIQUE (station, session, seq))"
    )
    op.execute("ALTER SEQUENCE telemetry_id_seq OWNED BY telemetry.id")
    op.execute("CREATE INDEX ix_telemetry_received ON telemetry (received_at)")
    # a message stored twice (the ledgers kept it out, but nothing else did) stays once
    op.execute(
        f"INSERT INTO telemetry ({_COLUMNS}) SELECT {_COLUMNS} FROM telemetry_partitioned "
        "ORDER BY id ON CONFLICT DO NOTHING"
    )
    op.execute("DROP TABLE telemetry_partitioned")
