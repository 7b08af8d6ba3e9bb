"""What the on-call engineer gets: alarms on failed executions, sustained throttling and unexpected function errors,
a dashboard of the workflow's metrics, and (with fanout:alarmEmail) an e-mail for every alarm."""

from __future__ import annotations

import json
from typing import Any

from cdk_synth import EVERYTHING_ON, Synthesized

from fanout_core import observability as handlers_observability
from infra import observability

FIVE_MINUTES = 300


def _alarms(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    return {
        a["Properties"]["AlarmName"]: a["Properties"] for a in synthesized.resources_of_type("AWS::CloudWatch::Alarm").values()
    }


def test_metric_names_charted_are_the_ones_the_handlers_publish() -> None:
    # the dashboard and alarms read names fanout_core.observability writes; a rename on one side only would
    # leave an alarm that can never fire
    assert observability.METRIC_NAMES <= handlers_observability.METRIC_NAMES
    assert (observability.METRICS_NAMESPACE, observability.SERVICE) == (
        handlers_observability.NAMESPACE,
        handlers_observability.SERVICE,
    )


def test_failed_executions_alarm_on_the_first_failure(default_stack: Synthesized) -> None:
    (machine_id,) = default_stack.resources_of_type("AWS::StepFunctions::StateMachine")
    alarm = _alarms(default_stack)["fanout-executions-failed"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("AWS/States", "ExecutionsFailed", "Sum")
    assert alarm["Dimensions"] == [{"Name": "StateMachineArn", "Value": {"Ref": machine_id}}]
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["Threshold"]) == (FIVE_MINUTES, 1, 1)
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"


def test_throttling_alarm_needs_three_periods_in_a_row(default_stack: Synthesized) -> None:
    alarm = _alarms(default_stack)["fanout-sustained-throttling"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("Fanout", "throttles", "Sum")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "fanout"}]
    assert alarm["Period"] == FIVE_MINUTES
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (3, 3)
    assert alarm["Threshold"] == observability.THROTTLED_CALLS


def test_function_error_alarms_leave_out_the_errors_raised_by_design(default_stack: Synthesized) -> None:
    alarms = _alarms(default_stack)
    for name, designed in (("plan", {"jobs_invalid"}), ("subtask", {"batches_throttled", "batches_incomplete"})):
        # Given the alarm's metric math: the function's Errors minus the errors it raises on purpose
        queries = alarms[f"fanout-{name}-errors"]["Metrics"]
        (expression,) = [q["Expression"] for q in queries if "Expression" in q]
        stats = {q["MetricStat"]["Metric"]["MetricName"]: q["Id"] for q in queries if "MetricStat" in q}

        # Then it subtracts exactly those, each filled with 0 when absent
        assert set(stats) == {"Errors", *designed}
        first, *subtracted = expression.split(" - ")
        assert first == stats["Errors"]
        assert set(subtracted) == {f"FILL({stats[d]}, 0)" for d in designed}
    # aggregate raises nothing by design: any error alarms
    assert alarms["fanout-aggregate-errors"]["MetricName"] == "Errors"


def test_without_an_address_alarms_have_no_actions_and_there_is_no_topic(default_stack: Synthesized) -> None:
    assert default_stack.resources_of_type("AWS::SNS::Topic") == {}
    assert all("AlarmActions" not in alarm for alarm in _alarms(default_stack).values())


def test_with_an_address_every_alarm_mails_it_through_a_tls_only_topic(everything_on_stack: Synthesized) -> None:
    (topic_id,) = everything_on_stack.resources_of_type("AWS::SNS::Topic")
    (subscription,) = everything_on_stack.resources_of_type("AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == EVERYTHING_ON["fanout:alarmEmail"]
    for name, alarm in _alarms(everything_on_stack).items():
        assert alarm["AlarmActions"] == [{"Ref": topic_id}], name
    (policy,) = everything_on_stack.resources_of_type("AWS::SNS::TopicPolicy").values()
    denies = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies)


def test_dashboard_charts_executions_tasks_throttles_tokens_latency_and_the_functions(default_stack: Synthesized) -> None:
    # Given the dashboard body (a JSON document joined with the resources' references)
    (dashboard,) = default_stack.resources_of_type("AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]
    text = "".join(part if isinstance(part, str) else json.dumps(part) for part in body["Fn::Join"][1])

    # Then it shows each of these metrics
    for metric in (
        '"AWS/States","ExecutionsFailed"',
        '"Fanout","tasks_ok"',
        '"Fanout","tasks_invalid"',
        '"Fanout","tasks_failed"',
        '"Fanout","throttles"',
        '"Fanout","retries"',
        '"Fanout","input_tokens"',
        '"Fanout","output_tokens"',
        '"Fanout","call_latency"',
        '"AWS/Lambda","Duration"',
        '"AWS/Lambda","Errors"',
    ):
        assert metric in text, f"{metric} is not on the dashboard"
    assert '"stat":"p99"' in text
