# The Amazon SNS HTTP/S notification that wraps an SES event for a webhook destination with
# format = "sns": the JSON document and headers SNS posts for an SES event destination
# (docs.aws.amazon.com/sns/latest/dg/http-notification-json.html), without the signature
# fields, which only AWS can make. Pure: values in, a string and a dict out.
from __future__ import annotations

import json
from urllib.parse import quote

# SNS names a topic arn:aws:sns:<region>:<account>:<name>; relay's default is plainly not AWS's.
DEFAULT_ARN = "arn:aws:sns:relay:000000000000:{set}-{destination}"


def default_topic_arn(destination: str) -> str:
    """The TopicArn of "set/destination" when none is configured."""
    cset, _, dest = destination.partition("/")
    return DEFAULT_ARN.format(set=cset, destination=dest)


def notification(*, message_id: str, topic_arn: str, message: str, timestamp: str, unsubscribe_url: str) -> str:
    """The body of a Notification: `message` (the SES record's JSON) as a string in Message."""
    return json.dumps({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic_arn,
        "Message": message,
        "Timestamp": timestamp,
        "UnsubscribeURL": unsubscribe_url,
    }, separators=(",", ":"), ensure_ascii=False)


def unsubscribe_url(base_url: str, topic_arn: str) -> str:
    # SNS always sends one and some parsers require it; relay serves no unsubscribe
    # (remove the destination from the configuration instead), see README.
    return f"{base_url}/sns/unsubscribe?TopicArn={quote(topic_arn, safe='')}"


def headers(*, message_id: str, topic_arn: str) -> dict[str, str]:
    """SNS's HTTP headers for a Notification (django-anymail checks the first two against the body)."""
    return {
        "x-amz-sns-message-type": "Notification",
        "x-amz-sns-message-id": message_id,
        "x-amz-sns-topic-arn": topic_arn,
        "Content-Type": "text/plain; charset=UTF-8",
    }
