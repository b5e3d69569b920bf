"""Topology, connection errors and the small inspection helpers, against the real broker."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.broker import Broker
from tests.support.waiting import wait_until
from worker.amqp.connection import connect
from worker.amqp.topology import COMMAND_QUEUE_POLICY, command_queue_policy_argv, declare_topology, queue_depth
from worker.errors import B2CError, BrokerUnavailable, TopologyError
from worker.settings import AmqpSettings


def _queue_info(name: str) -> dict[str, Any]:
    listing = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--formatter", "json", "name", "type", "durable", "arguments"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    rows: dict[str, dict[str, Any]] = {row["name"]: row for row in json.loads(listing)}
    return rows[name]


def test_topology_is_declared_with_quorum_and_delivery_limit(broker: Broker, amqp_settings: AmqpSettings) -> None:
    declare_topology(broker.channel, amqp_settings)
    declare_topology(broker.channel, amqp_settings)

    command = _queue_info(amqp_settings.command_queue)
    assert command["type"] == "quorum"
    assert command["durable"] is True
    arguments = {key: value for key, _kind, value in command["arguments"]}
    assert arguments["x-delivery-limit"] == 2
    assert arguments["x-dead-letter-exchange"] == ""
    assert arguments["x-dead-letter-routing-key"] == amqp_settings.dead_queue
    dead = _queue_info(amqp_settings.dead_queue)
    assert dead["type"] == "quorum"
    assert dead["durable"] is True
    broker.channel.exchange_declare(amqp_settings.events_exchange, exchange_type="topic", durable=True, passive=True)


def test_a_queue_with_other_arguments_is_a_clear_error(broker: Broker, amqp_settings: AmqpSettings) -> None:
    declare_topology(broker.channel, amqp_settings)
    changed = dataclasses.replace(amqp_settings, delivery_limit=7)

    with pytest.raises(TopologyError) as caught:
        declare_topology(broker.channel, changed)

    message = str(caught.value)
    assert isinstance(caught.value, B2CError)
    assert repr(amqp_settings.command_queue) in message
    assert "x-delivery-limit" in message
    assert "B2C_DELIVERY_LIMIT" in message


def test_a_classic_queue_in_the_way_is_named(broker: Broker, amqp_settings: AmqpSettings) -> None:
    broker.channel.queue_declare(amqp_settings.dead_queue, durable=True)

    with pytest.raises(TopologyError, match=amqp_settings.dead_queue):
        declare_topology(broker.channel, amqp_settings)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_broker_names_the_url_without_its_password() -> None:
    port = _closed_port()

    with pytest.raises(BrokerUnavailable) as caught:
        connect(f"amqp://guest:s3cret-pw@127.0.0.1:{port}/%2F")

    assert str(caught.value) == (f"cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:{port}/%2F: connection refused")
    assert "s3cret-pw" not in repr(caught.value)


def test_wrong_password_is_reported_as_authentication(amqp_url: str) -> None:
    with pytest.raises(BrokerUnavailable, match="authentication failed") as caught:
        connect("amqp://guest:not-the-password@127.0.0.1:5672/%2F")
    assert "not-the-password" not in str(caught.value)


def test_queue_depth_counts_ready_messages_and_refuses_a_missing_queue(
    broker: Broker, names: Callable[[str], str]
) -> None:
    queue = names("depth")
    broker.channel.queue_declare(queue, durable=True)
    for index in range(3):
        broker.put(queue, b"{}", message_id=str(index))

    assert queue_depth(broker.channel, queue) == 3
    with pytest.raises(TopologyError, match="does not exist"):
        queue_depth(broker.channel, names("missing"))


def _effective_policy(name: str) -> Any:
    """The policy in force on a queue and its definition (RabbitMQ 3.10's list_queues has no definition column)."""

    def listing(*argv: str) -> Any:
        run = subprocess.run(
            ["rabbitmqctl", *argv, "-q", "--formatter", "json"], capture_output=True, text=True, check=True, timeout=30
        )
        return json.loads(run.stdout)

    policy = {row["name"]: row for row in listing("list_queues", "name", "policy")}[name]["policy"]
    definitions = {row["name"]: json.loads(row["definition"]) for row in listing("list_policies")}
    return policy or None, definitions.get(policy)


def test_the_documented_policy_makes_an_existing_command_queue_dead_letter_at_least_once(
    broker: Broker, amqp_settings: AmqpSettings
) -> None:
    """Declared first with the arguments it always had (an existing deployment), then given the policy."""
    declare_topology(broker.channel, amqp_settings)
    policy = "test-" + amqp_settings.command_queue
    argv = command_queue_policy_argv(amqp_settings, name=policy)
    assert argv[-2] == "^" + re.escape(amqp_settings.command_queue) + "$", "matches the test's command queue only"
    subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
    try:
        wanted = (policy, COMMAND_QUEUE_POLICY)
        wait_until(lambda: _effective_policy(amqp_settings.command_queue) == wanted, 10, "the policy applied")
        assert _effective_policy(amqp_settings.dead_queue) == (None, None), "the dead queue is left alone"
        declare_topology(broker.channel, amqp_settings)  # the worker's declaration still agrees with the queue
    finally:
        subprocess.run(["rabbitmqctl", "clear_policy", policy], capture_output=True, check=False, timeout=30)
