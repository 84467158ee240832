"""template.yaml, read as data: alarms, dashboard, least privilege, secrets per function, logs, TLS, throttling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sendonce.local.gateway import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

METRICS = (
    "Sent", "FailedPermanent", "FailedHalt", "FailedExhausted", "SkippedAlreadySent", "DeferredThrottle",
    "DeferredNoSlot", "Ambiguous", "ResentWithoutEvidence", "Reset", "RecoveredFromJournal", "ReconciledByWebhook",
    "DeadLettered", "WebhookAccepted", "WebhookRefused", "WebhookStatusesApplied", "ClaimLatency", "FinalizeLatency",
    "GraphLatency", "StuckRows", "CampaignsWithoutProgress", "WaitingForMessagingLimit", "WaitingNotNow",
    "ReleasedFromWait", "CampaignsPausedByTemplate",
)
# alarm logical id -> its section of docs/runbook.md
ALARMS = {
    "DeadLetterQueueAlarm": "dlq-not-empty",
    "FailureRatioAlarm": "failure-ratio",
    "WebhookRefusedAlarm": "webhook-refused",
    "StuckRowsAlarm": "stuck-rows",
    "CampaignStalledAlarm": "campaign-stalled",
    "SenderErrorsAlarm": "sender-errors",
    "ThrottlingAlarm": "throttling",
    "CreationFailuresAlarm": "creation-failed",
}
# What every function reads (Globals), then what each one gets besides.
COMMON_ENV = {"PG_PREPARE_THRESHOLD", "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"}
FUNCTION_ENV = {
    "SenderFunction": {
        "DATABASE_URL", "WHATSAPP_ACCESS_TOKEN", "SEND_QUEUE_URL", "IDEMPOTENCY_TABLE", "WHATSAPP_API_BASE_URL",
        "WHATSAPP_MAX_MPS", "STUCK_AFTER_SECONDS",
    },
    "ResetStuckFunction": {"DATABASE_URL", "SEND_QUEUE_URL", "IDEMPOTENCY_TABLE", "STUCK_AFTER_SECONDS", "AMBIGUOUS_POLICY"},
    "RecomputeCountersFunction": {"DATABASE_URL"},
    "DlqHandlerFunction": {"DATABASE_URL"},
    "WebhookFunction": {"DATABASE_URL", "WHATSAPP_APP_SECRET", "WEBHOOK_VERIFY_TOKEN"},
    "CampaignsApiFunction": {
        "DATABASE_URL", "SEND_QUEUE_URL", "CONTACTS_BUCKET", "WHATSAPP_BUSINESS_ACCOUNT_ID", "WHATSAPP_ACCESS_TOKEN",
        "WHATSAPP_API_BASE_URL",
    },
}
SECRET_PARAMETERS = {
    "DATABASE_URL": "DatabaseUrlSecretArn",
    "WHATSAPP_ACCESS_TOKEN": "WhatsAppAccessTokenSecretArn",
    "WHATSAPP_APP_SECRET": "WhatsAppAppSecretSecretArn",
}
FUNCTION_SECRETS = {
    "SenderFunction": {"DatabaseUrlSecretArn", "WhatsAppAccessTokenSecretArn"},
    "ResetStuckFunction": {"DatabaseUrlSecretArn"},
    "RecomputeCountersFunction": {"DatabaseUrlSecretArn"},
    "DlqHandlerFunction": {"DatabaseUrlSecretArn"},
    "WebhookFunction": {"DatabaseUrlSecretArn", "WhatsAppAppSecretSecretArn"},
    "CampaignsApiFunction": {"DatabaseUrlSecretArn", "WhatsAppAccessTokenSecretArn"},
}
TOPIC_ACTIONS = {"If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
SERVICE_DIMENSION = [{"Name": "service", "Value": "sendonce"}]


TEMPLATE_DATA = load_template(TEMPLATE)
RESOURCES = TEMPLATE_DATA["Resources"]
PARAMETERS = TEMPLATE_DATA["Parameters"]


def of_type(kind: str) -> dict[str, dict]:
    return {name: r for name, r in RESOURCES.items() if r["Type"] == kind}


FUNCTIONS = of_type("AWS::Serverless::Function")


def properties(logical_id: str) -> dict:
    return RESOURCES[logical_id].get("Properties") or {}


def refs(value) -> set[str]:
    """Every name a value refers to: Ref X, GetAtt X.Y, and ${X} in Sub strings."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref":
                found.add(inner)
            elif key == "GetAtt":
                found.add(inner.split(".")[0] if isinstance(inner, str) else inner[0])
            elif key == "Sub":
                text = inner if isinstance(inner, str) else inner[0]
                found |= {name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text)}
            else:
                found |= refs(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= refs(inner)
    return found


def statements(function: str) -> list[dict]:
    """The inline IAM statements of a function's Policies (SAM policy templates carry none)."""
    found = []
    for policy in properties(function).get("Policies") or []:
        if isinstance(policy, dict) and "Statement" in policy:
            found.extend(policy["Statement"])
    return found


def actions(statement: dict) -> list[str]:
    action = statement.get("Action", [])
    return [action] if isinstance(action, str) else action


def environment(function: str) -> set[str]:
    globals_env = (TEMPLATE_DATA["Globals"]["Function"].get("Environment") or {}).get("Variables") or {}
    own = (properties(function).get("Environment") or {}).get("Variables") or {}
    return set(globals_env) | set(own)


def own_variables(function: str) -> dict:
    return (properties(function).get("Environment") or {}).get("Variables") or {}


def substituted(body: str) -> str:
    """A dashboard body with its ${...} replaced, as CloudFormation would, by plain text."""
    return re.sub(r"\$\{[^}]+\}", "x", body)


# -- alarms ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("logical_id", sorted(ALARMS))
def test_alarm_each_named_exists_with_runbook_and_topic(logical_id):
    # Given the template's alarms
    alarms = of_type("AWS::CloudWatch::Alarm")

    # Then the alarm exists under its stable logical id, names its runbook section, notifies only when a topic is set
    assert logical_id in alarms, sorted(alarms)
    spec = properties(logical_id)
    assert f"docs/runbook.md#{ALARMS[logical_id]}" in spec["AlarmDescription"]
    assert spec["AlarmActions"] == TOPIC_ACTIONS
    assert spec.get("OKActions", TOPIC_ACTIONS) == TOPIC_ACTIONS


def test_alarm_topic_parameter_empty_by_default_no_actions():
    # Given the AlarmTopicArn parameter and the condition the alarms use
    parameter = PARAMETERS["AlarmTopicArn"]
    condition = TEMPLATE_DATA["Conditions"]["HasAlarmTopic"]

    # Then alarms come without actions unless a topic is given, and every alarm uses the condition
    assert parameter["Default"] == ""
    assert condition == {"Not": [{"Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}
    assert set(of_type("AWS::CloudWatch::Alarm")) == set(ALARMS)


@pytest.mark.parametrize(
    ("logical_id", "metric"),
    [
        ("WebhookRefusedAlarm", "WebhookRefused"),
        ("StuckRowsAlarm", "StuckRows"),
        ("CampaignStalledAlarm", "CampaignsWithoutProgress"),
        ("ThrottlingAlarm", "DeferredThrottle"),
    ],
)
def test_alarm_custom_metric_reads_emf_namespace_and_service(logical_id, metric):
    # Given an alarm on a Powertools (EMF) metric
    spec = properties(logical_id)

    # Then it reads the namespace and the dimension the functions emit
    assert (spec["Namespace"], spec["MetricName"], spec["Dimensions"]) == ("sendonce", metric, SERVICE_DIMENSION)
    assert spec["ComparisonOperator"] == "GreaterThanThreshold"
    assert spec["TreatMissingData"] == "notBreaching"


def test_alarm_failure_ratio_over_15_minutes_divides_failures_by_answers():
    # Given the failure-ratio alarm (metric math)
    spec = properties("FailureRatioAlarm")
    queries = {q["Id"]: q for q in spec["Metrics"]}

    # Then it sums Sent, FailedPermanent and FailedExhausted over 15 minutes and returns only the ratio
    inputs = {q["MetricStat"]["Metric"]["MetricName"]: q for q in queries.values() if "MetricStat" in q}
    assert set(inputs) == {"Sent", "FailedPermanent", "FailedExhausted"}
    for query in inputs.values():
        assert query["MetricStat"]["Metric"]["Namespace"] == "sendonce"
        assert query["MetricStat"]["Metric"]["Dimensions"] == SERVICE_DIMENSION
        assert (query["MetricStat"]["Period"], query["MetricStat"]["Stat"], query["ReturnData"]) == (900, "Sum", False)
    returned = [q for q in queries.values() if q.get("ReturnData", True)]
    assert len(returned) == 1 and "Expression" in returned[0]
    expression = returned[0]["Expression"]
    assert all(query_id in expression for query_id in queries if query_id != returned[0]["Id"])
    assert spec["Threshold"] == {"Ref": "FailureRatioAlarmThreshold"}
    assert PARAMETERS["FailureRatioAlarmThreshold"]["Default"] == 0.2


def test_alarm_sender_errors_watches_sender_lambda_errors():
    # Given the sender-errors alarm
    spec = properties("SenderErrorsAlarm")

    # Then it reads AWS/Lambda Errors of the sender function
    assert (spec["Namespace"], spec["MetricName"]) == ("AWS/Lambda", "Errors")
    assert spec["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "SenderFunction"}}]


def test_alarm_throttling_sustained_fires_after_15_minutes():
    # Given the throttling alarm
    spec = properties("ThrottlingAlarm")

    # Then it needs every 5-minute period of 15 minutes above the threshold
    assert spec["Period"] * spec["EvaluationPeriods"] == 900
    assert spec["DatapointsToAlarm"] == spec["EvaluationPeriods"]


# -- dashboard ------------------------------------------------------------------------------------------------


def test_dashboard_body_every_metric_mentioned():
    # Given the dashboard
    dashboards = of_type("AWS::CloudWatch::Dashboard")
    assert list(dashboards) == ["Dashboard"]
    body = properties("Dashboard")["DashboardBody"]["Sub"]

    # When CloudFormation substitutes its references
    document = json.loads(substituted(body))

    # Then it is JSON, and plots every custom metric (namespace sendonce, service=sendonce), the DLQ and Lambda
    plotted = {
        tuple(line[:4])
        for widget in document["widgets"]
        for line in (widget["properties"].get("metrics") or [])
        if isinstance(line[0], str)
    }
    missing = [m for m in METRICS if ("sendonce", m, "service", "sendonce") not in plotted]
    assert not missing, missing
    lambda_metrics = {(ns, name) for ns, name, *_ in plotted if ns == "AWS/Lambda"}
    assert {("AWS/Lambda", "Errors"), ("AWS/Lambda", "Duration"), ("AWS/Lambda", "ConcurrentExecutions")} <= lambda_metrics
    assert "${DeadLetterQueue.QueueName}" in body
    assert all(f"${{{alarm}.Arn}}" in body for alarm in ALARMS)


# -- functions: roles, environment, secrets ---------------------------------------------------------------------


def test_functions_every_one_listed_no_unknown():
    # Given the functions of the template
    # Then the checks below cover each of them
    assert set(FUNCTIONS) == set(FUNCTION_ENV)


@pytest.mark.parametrize("function", sorted(FUNCTION_ENV))
def test_function_role_own_generated_no_shared_role(function):
    # Given a function
    spec = properties(function)

    # Then SAM generates its own role from its Policies: no Role property, no IAM role declared to share
    assert "Role" not in spec
    assert spec.get("Policies")
    assert "Role" not in TEMPLATE_DATA["Globals"]["Function"]
    assert not of_type("AWS::IAM::Role")


@pytest.mark.parametrize("function", sorted(FUNCTION_ENV))
def test_function_environment_only_listed_variables(function):
    # Given a function's environment (Globals plus its own)
    # Then it holds exactly what it needs
    assert environment(function) == COMMON_ENV | FUNCTION_ENV[function]


def test_globals_environment_no_secret_or_resource_variables():
    # Given the Globals environment
    variables = set(TEMPLATE_DATA["Globals"]["Function"]["Environment"]["Variables"])

    # Then it holds only what every function reads, nothing secret
    assert variables == COMMON_ENV


@pytest.mark.parametrize("function", sorted(FUNCTION_ENV))
def test_function_secret_variables_hold_secret_arn_parameters(function):
    # Given a function's own variables
    variables = own_variables(function)

    # Then each secret it reads is the ARN parameter for that secret
    for name, parameter in SECRET_PARAMETERS.items():
        if name in variables:
            assert variables[name] == {"Ref": parameter}


@pytest.mark.parametrize("function", sorted(FUNCTION_ENV))
def test_function_get_secret_value_only_own_secrets(function):
    # Given the IAM statements of a function
    secret_statements = [s for s in statements(function) if any(a.startswith("secretsmanager:") for a in actions(s))]

    # Then one statement allows GetSecretValue, on exactly its own secrets (ARN and ARN-??????), nothing wider
    assert len(secret_statements) == 1
    statement = secret_statements[0]
    assert actions(statement) == ["secretsmanager:GetSecretValue"]
    assert statement["Effect"] == "Allow"
    resource = statement["Resource"]
    assert refs(resource) <= FUNCTION_SECRETS[function] | {"HasWebhookSecret"}, refs(resource)
    assert refs(resource) >= FUNCTION_SECRETS[function]
    assert "*" not in json.dumps(resource)
    text = json.dumps(resource)
    for parameter in FUNCTION_SECRETS[function]:
        assert json.dumps({"Ref": parameter}) in text
        assert json.dumps({"Sub": f"${{{parameter}}}-??????"}) in text


def test_webhook_app_secret_none_grants_database_secret_only():
    # Given the webhook's secret statement when WhatsAppAppSecretSecretArn is "none"
    [statement] = [s for s in statements("WebhookFunction") if "secretsmanager:GetSecretValue" in actions(s)]
    condition, when_set, when_none = statement["Resource"]["If"]

    # Then the app secret is granted only when it is an ARN
    assert condition == "HasWebhookSecret"
    assert TEMPLATE_DATA["Conditions"]["HasWebhookSecret"] == {
        "Not": [{"Equals": [{"Ref": "WhatsAppAppSecretSecretArn"}, "none"]}]
    }
    assert refs(when_set) == {"DatabaseUrlSecretArn", "WhatsAppAppSecretSecretArn"}
    assert refs(when_none) == {"DatabaseUrlSecretArn"}


@pytest.mark.parametrize("parameter", sorted(set(SECRET_PARAMETERS.values())))
def test_secret_parameter_plain_value_refused(parameter):
    # Given a secret parameter's AllowedPattern
    pattern = re.compile(PARAMETERS[parameter]["AllowedPattern"])

    # Then only ARNs of sendonce/ secrets pass (the app secret also takes "none")
    assert pattern.fullmatch("arn:aws:secretsmanager:eu-west-1:123456789012:secret:sendonce/db-AbCdEf")
    assert pattern.fullmatch("arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:sendonce/token")
    assert not pattern.fullmatch("postgresql://u:p@host:5432/db")
    assert not pattern.fullmatch("0123456789abcdef0123456789abcdef")
    assert not pattern.fullmatch("arn:aws:secretsmanager:eu-west-1:123456789012:secret:other/db-AbCdEf")
    assert bool(pattern.fullmatch("none")) == (parameter == "WhatsAppAppSecretSecretArn")
    assert "Default" not in PARAMETERS[parameter]


# -- Graph API version --------------------------------------------------------------------------------------------


def test_sender_base_url_built_from_graph_api_version_unless_overridden():
    # Given the sender's WHATSAPP_API_BASE_URL
    value = own_variables("SenderFunction")["WHATSAPP_API_BASE_URL"]

    # Then it is the override when given, else graph.facebook.com with the version parameter
    assert value == {
        "If": [
            "HasApiBaseUrlOverride",
            {"Ref": "WhatsAppApiBaseUrl"},
            {"Sub": "https://graph.facebook.com/${GraphApiVersion}"},
        ]
    }
    assert re.fullmatch(PARAMETERS["GraphApiVersion"]["AllowedPattern"], PARAMETERS["GraphApiVersion"]["Default"])
    assert PARAMETERS["WhatsAppApiBaseUrl"]["Default"] == ""


# -- logs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", sorted(FUNCTION_ENV))
def test_function_log_group_own_with_retention(function):
    # Given a function's logging configuration
    log_group = properties(function)["LoggingConfig"]["LogGroup"]["Ref"]

    # Then it logs to a log group of its own that keeps events LogRetentionInDays
    assert RESOURCES[log_group]["Type"] == "AWS::Logs::LogGroup"
    assert properties(log_group)["RetentionInDays"] == {"Ref": "LogRetentionInDays"}
    others = [f for f in FUNCTION_ENV if f != function]
    assert all(properties(f)["LoggingConfig"]["LogGroup"]["Ref"] != log_group for f in others)


def test_log_groups_every_one_retention_30_days_by_default():
    # Given every log group of the template
    groups = of_type("AWS::Logs::LogGroup")

    # Then each has a retention, 30 days unless the parameter says otherwise
    assert len(groups) >= len(FUNCTION_ENV) + 2
    assert all(spec["Properties"].get("RetentionInDays") == {"Ref": "LogRetentionInDays"} for spec in groups.values())
    assert PARAMETERS["LogRetentionInDays"]["Default"] == 30


# -- bucket, APIs, webhook, encryption -------------------------------------------------------------------------


def test_contacts_bucket_policy_non_tls_denied():
    # Given the policies on ContactsBucket
    policies = [p for p in of_type("AWS::S3::BucketPolicy").values() if p["Properties"]["Bucket"] == {"Ref": "ContactsBucket"}]

    # Then a statement denies every request not made over TLS, on the bucket and its objects
    assert len(policies) == 1
    denials = [
        s
        for s in policies[0]["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny" and str(s["Condition"]["Bool"]["aws:SecureTransport"]).lower() == "false"
    ]
    assert denials
    assert denials[0]["Principal"] == "*" and denials[0]["Action"] == "s3:*"
    assert refs(denials[0]["Resource"]) == {"ContactsBucket"} and len(denials[0]["Resource"]) == 2


@pytest.mark.parametrize("api", ["WebhookHttpApi", "CampaignsHttpApi"])
def test_http_api_access_logs_and_throttling_set(api):
    # Given an HTTP API
    spec = properties(api)
    assert RESOURCES[api]["Type"] == "AWS::Serverless::HttpApi"

    # Then it logs access to a log group of the template, as JSON without the query string, and throttles
    destination = spec["AccessLogSettings"]["DestinationArn"]["GetAtt"].split(".")[0]
    assert RESOURCES[destination]["Type"] == "AWS::Logs::LogGroup"
    log_format = json.loads(spec["AccessLogSettings"]["Format"])
    assert "requestId" in log_format
    assert not any("querystring" in v.lower() or "path" in v.lower() for v in log_format.values())
    throttling = spec["DefaultRouteSettings"]
    for setting in ("ThrottlingBurstLimit", "ThrottlingRateLimit"):
        parameter = throttling[setting]["Ref"]
        assert PARAMETERS[parameter]["Type"] == "Number"


def test_http_apis_only_two_both_covered():
    # Given the template's HTTP APIs
    # Then the two checked above are all there is (an implicit API would escape the checks)
    assert set(of_type("AWS::Serverless::HttpApi")) == {"WebhookHttpApi", "CampaignsHttpApi"}
    for function in FUNCTION_ENV:
        for event in (properties(function).get("Events") or {}).values():
            if event["Type"] == "HttpApi":
                assert "ApiId" in event["Properties"]


def test_webhook_reserved_concurrency_parameter_default_10():
    # Given the webhook function
    # Then its concurrency is reserved (and capped) by a parameter, 10 by default
    assert properties("WebhookFunction")["ReservedConcurrentExecutions"] == {"Ref": "WebhookReservedConcurrency"}
    assert PARAMETERS["WebhookReservedConcurrency"]["Default"] == 10


def test_storage_every_queue_table_bucket_encrypted():
    # Given the queues, the table and the bucket
    # Then each is encrypted at rest
    for spec in of_type("AWS::SQS::Queue").values():
        assert spec["Properties"].get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in spec["Properties"]
    for spec in of_type("AWS::DynamoDB::Table").values():
        assert spec["Properties"]["SSESpecification"]["SSEEnabled"] is True
    for spec in of_type("AWS::S3::Bucket").values():
        assert spec["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]


def test_template_routes_local_gateway_still_parses():
    # Given the local gateway's reading of the template
    from sendonce.local.gateway import template_routes

    # When
    routes = template_routes(TEMPLATE)

    # Then both APIs' routes are found, the campaigns API IAM-authorized and the webhook not
    by_api = {(r.api, r.method, r.path): r for r in routes}
    assert not by_api[("WebhookHttpApi", "POST", "/webhook")].iam
    assert by_api[("CampaignsHttpApi", "POST", "/campaigns")].iam


def test_campaigns_api_async_creation_failures_go_to_a_queue_with_an_alarm():
    # Given the campaigns API, which answers 202 and creates from S3 in an asynchronous invocation
    config = TEMPLATE_DATA["Resources"]["CampaignsApiFunction"]["Properties"]["EventInvokeConfig"]

    # Then a creation that fails after its retries lands on a queue (an alarm watches it), never dropped
    assert config["DestinationConfig"]["OnFailure"] == {"Type": "SQS", "Destination": {"GetAtt": "CreationFailureQueue.Arn"}}
    assert TEMPLATE_DATA["Resources"]["CreationFailureQueue"]["Type"] == "AWS::SQS::Queue"
