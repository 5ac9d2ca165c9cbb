"""The training worker: runs training jobs from RabbitMQ in child processes at a lower CPU priority."""
