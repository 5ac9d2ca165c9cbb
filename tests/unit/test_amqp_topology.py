"""The RabbitMQ topology written out for operators matches the one declared in code."""
import json
from pathlib import Path

from services.common.amqp import DEFAULT_DELIVERY_LIMIT, Topology, message_id

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_file_is_current() -> None:
    on_disk = json.loads((ROOT / "infra/rabbitmq/definitions.json").read_text())
    assert on_disk == Topology().definitions(), "run `doctag amqp definitions --output infra/rabbitmq/definitions.json`"


def test_jobs_queue_is_quorum_with_delivery_limit_and_dead_letters() -> None:
    args = Topology(prefix="x").jobs_queue_arguments
    assert args["x-queue-type"] == "quorum"
    assert args["x-delivery-limit"] == DEFAULT_DELIVERY_LIMIT
    assert args["x-dead-letter-exchange"] == "x.dlx"


def test_message_id_is_stable_per_content_version() -> None:
    assert message_id("d", "a" * 64) == message_id("d", "a" * 64)
    assert message_id("d", "a" * 64) != message_id("d", "b" * 64)
