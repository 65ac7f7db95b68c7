# The Amazon SNS HTTP/S notification that wraps an SES event for a webhook destination with
# format = "sns": the JSON document and headers SNS posts for an SES event destination
# (docs.aws.amazon.com/sns/latest/dg/http-notification-json.html), without the signature
# fields, which only AWS can make. Pure: values in, a string and a dict out.
from __future__ import annotations

import hashlib
import hmac
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


def headers(*, message_id: str, topic_arn: str, message_type: str = "Notification") -> dict[str, str]:
    """SNS's HTTP headers (django-anymail checks the first two against the body)."""
    return {
        "x-amz-sns-message-type": message_type,
        "x-amz-sns-message-id": message_id,
        "x-amz-sns-topic-arn": topic_arn,
        "Content-Type": "text/plain; charset=UTF-8",
    }


# --- subscription confirmation (confirm_subscription = true) ---------------------------
# As SNS does for a new HTTP/S subscription, a SubscriptionConfirmation goes first; the
# consumer confirms by fetching SubscribeURL, which relay serves on its tracking listener
# (subscriptions.py). The Token is an HMAC of the destination and its topic, so only the
# endpoint that was sent it can confirm, and a changed topic_arn asks again.
_CONFIRM_NS = b"relay.sns.confirm\x00"
CONFIRM_PATH = "/sns/confirm"
CONFIRM_MESSAGE = ("You have chosen to subscribe to the topic {topic}.\n"
                   "To confirm the subscription, visit the SubscribeURL included in this message.")


def confirm_token(key: bytes, destination: str, topic_arn: str) -> str:
    return hmac.new(key, _CONFIRM_NS + f"{destination}\n{topic_arn}".encode(), hashlib.sha256).hexdigest()


def subscribe_url(base_url: str, topic_arn: str, token: str) -> str:
    """SNS's shape (…/?Action=ConfirmSubscription&TopicArn=…&Token=…), on relay's listener."""
    return (f"{base_url}{CONFIRM_PATH}?Action=ConfirmSubscription&TopicArn={quote(topic_arn, safe='')}"
            f"&Token={token}")


def subscription_confirmation(*, message_id: str, topic_arn: str, token: str, subscribe_url: str,
                              timestamp: str) -> str:
    return json.dumps({
        "Type": "SubscriptionConfirmation",
        "MessageId": message_id,
        "Token": token,
        "TopicArn": topic_arn,
        "Message": CONFIRM_MESSAGE.format(topic=topic_arn),
        "SubscribeURL": subscribe_url,
        "Timestamp": timestamp,
    }, separators=(",", ":"), ensure_ascii=False)


def confirmed_key(destination: str) -> str:
    """The settings row that records a destination's confirmed topic."""
    return f"sns_confirmed:{destination}"
