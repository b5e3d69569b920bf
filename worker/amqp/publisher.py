"""The one way this package publishes: persistent JSON, mandatory, and confirmed by the broker.

A publish returns only once the broker has taken responsibility for the message; anything else is a
PublishError whose ``failure`` says why (unroutable, nacked, refused by the broker, connection lost), so each
caller can keep its own rule for what to do next without parsing messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import pika
import pika.exceptions

from worker.amqp.connection import close_quietly, connect
from worker.errors import BrokerUnavailable, PublishError, PublishFailure
from worker.logs import quiet_returned_bodies
from worker.settings import redact_url

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
PERSISTENT = 2


def _properties(message_id: str | None, headers: Mapping[str, Any] | None) -> Any:
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=PERSISTENT,
        message_id=message_id,
        headers=dict(headers) if headers else None,
        timestamp=int(time.time()),
    )


def _unroutable(exchange: str, routing_key: str) -> str:
    if not exchange:
        return f"unroutable: queue {routing_key!r} does not exist"
    return f"unroutable: no queue is bound for {_target(exchange, routing_key)}"


def _target(exchange: str, routing_key: str) -> str:
    return f"queue {routing_key!r}" if not exchange else f"exchange {exchange!r} with routing key {routing_key!r}"


class ConfirmedPublisher:
    """Publishes one message at a time and returns only once the broker has taken responsibility for it.

    One lock serialises publishers; a keep-alive thread services heartbeats between publishes so an idle
    publisher is not dropped by the broker. A lost connection is re-opened once per publish, which can
    duplicate a message whose confirm was lost: consumers deduplicate by message or event id. With
    ``reconnect=False`` a lost connection fails the publish instead, for callers that report exactly how far
    they got (the ``publish`` command, the dead-letter replay).
    """

    def __init__(
        self, url: str, *, name: str = "mpesa-b2c-publisher", heartbeat: int = 30, reconnect: bool = True
    ) -> None:
        quiet_returned_bodies()
        self._url = url
        self._safe_url = redact_url(url)
        self._name = name
        self._heartbeat = heartbeat
        self._reconnect = reconnect
        self._lock = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None
        self._closed = threading.Event()
        self._keepalive = threading.Thread(target=self._keep_alive, name=f"{name}-keepalive", daemon=True)
        self._keepalive.start()

    def __enter__(self) -> ConfirmedPublisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        properties = _properties(message_id, headers)
        target = _target(exchange, routing_key)
        with self._lock:
            if self._closed.is_set():
                raise PublishError("the publisher is closed", PublishFailure.CLOSED)
            for attempt in (1, 2):
                try:
                    channel = self._ensure_channel()
                    channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
                    return
                except pika.exceptions.UnroutableError:
                    raise PublishError(_unroutable(exchange, routing_key), PublishFailure.UNROUTABLE) from None
                except pika.exceptions.NackError:
                    raise PublishError(
                        f"the broker refused (nack) the message for {target}", PublishFailure.NACKED
                    ) from None
                except pika.exceptions.ChannelClosedByBroker as exc:
                    self._channel = None
                    raise PublishError(
                        f"the broker refused {target}: {exc.reply_text}", PublishFailure.REFUSED
                    ) from None
                except (pika.exceptions.AMQPError, BrokerUnavailable, OSError) as exc:
                    self._drop()
                    if attempt == 2 or not self._reconnect:
                        raise PublishError(
                            f"cannot publish to {target} on {self._safe_url}: {exc}", PublishFailure.CONNECTION
                        ) from None
                    log.warning("publisher connection to %s failed (%s); reconnecting", self._safe_url, exc)

    def publish_to_queue(
        self,
        queue: str,
        body: bytes,
        *,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Straight into ``queue`` by name (the default exchange); unroutable means the queue does not exist."""
        self.publish("", queue, body, message_id=message_id, headers=headers)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._drop()
        if self._keepalive is not threading.current_thread():
            self._keepalive.join(timeout=5)

    def _ensure_channel(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._drop()
            self._connection = connect(self._url, heartbeat=self._heartbeat, name=self._name)
        if self._channel is None or not self._channel.is_open:
            channel = self._connection.channel()
            channel.confirm_delivery()
            self._channel = channel
        return self._channel

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        close_quietly(connection)

    def _keep_alive(self) -> None:
        interval = max(0.5, self._heartbeat / 3)
        while not self._closed.wait(interval):
            if not self._lock.acquire(blocking=False):
                continue
            try:
                if self._connection is not None and self._connection.is_open:
                    self._connection.process_data_events(time_limit=0)
            except (pika.exceptions.AMQPError, OSError) as exc:
                log.info("idle publisher connection to %s lost (%s); will reconnect on demand", self._safe_url, exc)
                self._drop()
            finally:
                self._lock.release()
