"""One Logger, Tracer and Metrics shared by the handlers (Powertools)."""

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="fanout")
tracer = Tracer(service="fanout")
metrics = Metrics(namespace="Fanout", service="fanout")
