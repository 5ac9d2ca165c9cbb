"""`make up` says exactly which server is missing and how to provide it (never a silent fallback)."""
from services.cli.dependencies import check
from services.cli.stack import free_ports
from services.common.settings import CommonSettings


def test_unreachable_servers_are_named_with_a_fix() -> None:
    pg_port, mq_port = free_ports(2)
    settings = CommonSettings(db_port=pg_port, amqp_url=f"amqp://guest:guest@127.0.0.1:{mq_port}/")
    missing = check(settings, "postgres", "", start_missing=False)
    assert len(missing) == 2
    pg, mq = (str(m) for m in missing)
    assert f"PostgreSQL is not reachable at 127.0.0.1:{pg_port}" in pg and "DOCTAG_DB_HOST" in pg
    assert f"RabbitMQ is not reachable at 127.0.0.1:{mq_port}" in mq and "DOCTAG_AMQP_URL" in mq
