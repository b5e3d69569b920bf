"""RabbitMQ plumbing, one job per module: :mod:`~worker.amqp.connection` (connecting, reconnect pacing),
:mod:`~worker.amqp.topology` (queues and exchange), :mod:`~worker.amqp.publisher` (the confirmed publisher,
the one way anything is published) and :mod:`~worker.amqp.consumer` (the threaded consumer).

Nothing here knows what a payout is; callers import from the modules.
"""
