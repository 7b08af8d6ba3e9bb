"""Alarms and a dashboard for the on-call engineer: executions, task outcomes, throttling, tokens, call latency
and the functions' own metrics, with an optional e-mail subscription for the alarms (fanout:alarmEmail)."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra.config import FanoutConfig
from infra.functions import METRICS_NAMESPACE, SERVICE, Functions
from infra.nag import suppress

PERIOD = Duration.minutes(5)
# sustained throttling: at least this many throttled model calls in each of this many 5-minute periods in a row;
# a burst at the start of a job is absorbed by the retries and is not worth a page
THROTTLED_CALLS = 10
THROTTLED_PERIODS = 3

# the names the handlers publish (fanout_core.observability.METRIC_NAMES; a test keeps the two in step)
TASKS_OK = "tasks_ok"
TASKS_INVALID = "tasks_invalid"
TASKS_FAILED = "tasks_failed"
MODEL_CALLS = "model_calls"
THROTTLES = "throttles"
RETRIES = "retries"
BATCH_RETRIES = "batch_retries"
INPUT_TOKENS = "input_tokens"
OUTPUT_TOKENS = "output_tokens"
CALL_LATENCY = "call_latency"
JOBS_INVALID = "jobs_invalid"
BATCHES_THROTTLED = "batches_throttled"
BATCHES_INCOMPLETE = "batches_incomplete"
METRIC_NAMES = frozenset(
    {
        TASKS_OK,
        TASKS_INVALID,
        TASKS_FAILED,
        MODEL_CALLS,
        THROTTLES,
        RETRIES,
        BATCH_RETRIES,
        INPUT_TOKENS,
        OUTPUT_TOKENS,
        CALL_LATENCY,
        JOBS_INVALID,
        BATCHES_THROTTLED,
        BATCHES_INCOMPLETE,
    }
)

UNENCRYPTED_ALARM_TOPIC = (
    "CloudWatch alarms cannot publish to a topic encrypted with the AWS managed SNS key, and a customer key costs "
    "a monthly fee at rest; the notifications carry alarm names and metric values, never job data"
)


def fanout_metric(name: str, statistic: str = "Sum", label: str | None = None) -> cloudwatch.Metric:
    """A metric the handlers publish in EMF (namespace Fanout, dimension service=fanout)."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"service": SERVICE},
        statistic=statistic,
        period=PERIOD,
        label=label,
    )


class Observability(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: FanoutConfig,
        functions: Functions,
        state_machine: sfn.StateMachine,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._functions = functions
        self._state_machine = state_machine
        self.topic = self._build_topic()
        self.alarms = [self._build_failed_executions_alarm(), self._build_throttling_alarm(), *self._build_error_alarms()]
        if self.topic is not None:
            for alarm in self.alarms:
                alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.topic))
        self.dashboard = self._build_dashboard()

    def _name(self, suffix: str) -> str:
        return f"{self._config.name_prefix}-{suffix}"

    def _build_topic(self) -> sns.Topic | None:
        if self._config.alarm_email is None:
            return None
        topic = sns.Topic(self, "AlarmTopic", topic_name=self._name("alarms"), enforce_ssl=True)
        # the address gets a confirmation mail first; alarms reach it once the subscription is confirmed
        topic.add_subscription(subscriptions.EmailSubscription(self._config.alarm_email))
        suppress(topic, "AwsSolutions-SNS2", UNENCRYPTED_ALARM_TOPIC)
        return topic

    def _build_failed_executions_alarm(self) -> cloudwatch.Alarm:
        return cloudwatch.Alarm(
            self,
            "ExecutionsFailed",
            alarm_name=self._name("executions-failed"),
            alarm_description="A fanout execution failed (an invalid job, or no task succeeded): see its Error and Cause",
            metric=self._state_machine.metric_failed(period=PERIOD, statistic="Sum"),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )

    def _build_throttling_alarm(self) -> cloudwatch.Alarm:
        return cloudwatch.Alarm(
            self,
            "SustainedThrottling",
            alarm_name=self._name("sustained-throttling"),
            alarm_description=(
                f"Bedrock throttled at least {THROTTLED_CALLS} model calls in each of {THROTTLED_PERIODS} periods of "
                "5 minutes: lower the jobs' limits.max_concurrency or raise the model's tokens-per-minute quota"
            ),
            metric=fanout_metric(THROTTLES),
            threshold=THROTTLED_CALLS,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=THROTTLED_PERIODS,
            datapoints_to_alarm=THROTTLED_PERIODS,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )

    def _build_error_alarms(self) -> list[cloudwatch.Alarm]:
        """One alarm per function on the errors nobody planned for: an invalid job (plan), and a batch handed back
        to the state machine to retry (subtask), are errors by design and are subtracted."""
        planned = {
            "plan": {"invalid": fanout_metric(JOBS_INVALID)},
            "subtask": {"throttled": fanout_metric(BATCHES_THROTTLED), "incomplete": fanout_metric(BATCHES_INCOMPLETE)},
            "aggregate": {},
        }
        alarms = []
        for fn, (name, expected) in zip(self._functions.all, planned.items(), strict=True):
            errors = fn.metric_errors(period=PERIOD, statistic="Sum")
            metric: cloudwatch.IMetric = errors
            if expected:
                metric = cloudwatch.MathExpression(
                    expression=" - ".join(["errors", *(f"FILL({key}, 0)" for key in expected)]),
                    using_metrics={"errors": errors, **expected},
                    label=f"{name} unexpected errors",
                    period=PERIOD,
                )
            alarms.append(
                cloudwatch.Alarm(
                    self,
                    f"{name.title()}Errors",
                    alarm_name=self._name(f"{name}-errors"),
                    alarm_description=f"The fanout {name} function raised an unexpected error: see its log group",
                    metric=metric,
                    threshold=1,
                    comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    evaluation_periods=1,
                    treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                )
            )
        return alarms

    def _build_dashboard(self) -> cloudwatch.Dashboard:
        machine = self._state_machine
        functions: tuple[lambda_.Function, ...] = self._functions.all
        graph = _graph
        return cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=self._config.name_prefix,
            default_interval=Duration.hours(6),
            widgets=[
                [
                    graph(
                        "Executions",
                        [
                            machine.metric_started(period=PERIOD, statistic="Sum", label="started"),
                            machine.metric_succeeded(period=PERIOD, statistic="Sum", label="succeeded"),
                            machine.metric_failed(period=PERIOD, statistic="Sum", label="failed"),
                            machine.metric_timed_out(period=PERIOD, statistic="Sum", label="timed out"),
                            machine.metric_aborted(period=PERIOD, statistic="Sum", label="aborted"),
                        ],
                    ),
                    graph(
                        "Tasks",
                        [
                            fanout_metric(TASKS_OK, label="ok"),
                            fanout_metric(TASKS_INVALID, label="invalid"),
                            fanout_metric(TASKS_FAILED, label="failed"),
                        ],
                    ),
                    cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms), width=8, height=6),
                ],
                [
                    graph(
                        "Model calls, throttles, retries",
                        [
                            fanout_metric(MODEL_CALLS, label="calls"),
                            fanout_metric(THROTTLES, label="throttled calls"),
                            fanout_metric(RETRIES, label="call retries"),
                            fanout_metric(BATCH_RETRIES, label="batch retries"),
                        ],
                    ),
                    graph(
                        "Tokens",
                        [fanout_metric(INPUT_TOKENS, label="in"), fanout_metric(OUTPUT_TOKENS, label="out")],
                    ),
                    graph(
                        "Model call latency (ms)",
                        [fanout_metric(CALL_LATENCY, statistic=p, label=p) for p in ("p50", "p90", "p99")],
                    ),
                ],
                [
                    graph(
                        "Lambda duration p90 (ms)",
                        [fn.metric_duration(period=PERIOD, statistic="p90", label=_short(fn)) for fn in functions],
                    ),
                    graph(
                        "Lambda errors",
                        [fn.metric_errors(period=PERIOD, statistic="Sum", label=_short(fn)) for fn in functions],
                    ),
                    graph(
                        "Lambda throttles",
                        [fn.metric_throttles(period=PERIOD, statistic="Sum", label=_short(fn)) for fn in functions],
                    ),
                ],
            ],
        )


def _graph(title: str, metrics: list[cloudwatch.IMetric]) -> cloudwatch.GraphWidget:
    return cloudwatch.GraphWidget(title=title, left=metrics, width=8, height=6)


def _short(fn: lambda_.Function) -> str:
    # the construct id: Plan, Subtask, Aggregate
    return fn.node.id
