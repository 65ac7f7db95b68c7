# A minimal Django site for the consumer tests: django-ses's and django-anymail's SES
# webhook views, routed as their docs say, configured with only the settings the README
# documents for relay's sns-format webhook. Served by Django's own WSGI server on loopback.
from __future__ import annotations

import threading
from typing import Any

ANYMAIL_SECRET = "relay:hook-secret-for-tests"  # anymail's WEBHOOK_SECRET, "user:password"
RELAY_SECRET = "relay-hmac-secret"  # the django-ses destination's `secret`

SETTINGS: dict[str, Any] = {
    "SECRET_KEY": "relay-tests-only",
    "DEBUG": False,
    "ALLOWED_HOSTS": ["127.0.0.1"],
    "ROOT_URLCONF": __name__,
    "INSTALLED_APPS": ["django.contrib.contenttypes", "anymail"],
    "MIDDLEWARE": [],
    "DATABASES": {},
    "USE_TZ": True,
    # django-ses: relay cannot sign as AWS; relay's HMAC headers are there to check instead.
    "AWS_SES_VERIFY_EVENT_SIGNATURES": False,
    "AWS_SNS_EVENT_TRUSTED_TOPIC_ARNS": ["arn:aws:sns:relay:000000000000:app-djses"],  # relay's default ARN
    "RELAY_WEBHOOK_SECRET": RELAY_SECRET,  # the destination's secret, checked by RelayEventWebhookView
    # anymail: basic auth in relay's webhook URL; no SNS API to confirm a subscription with.
    "ANYMAIL": {"WEBHOOK_SECRET": ANYMAIL_SECRET, "AMAZON_SES_AUTO_CONFIRM_SNS_SUBSCRIPTIONS": False},
}


def _relay_view() -> Any:
    """The README's RelayEventWebhookView, as written there: relay's HMAC instead of AWS's signature."""
    import hashlib
    import hmac
    import time

    from django.conf import settings
    from django.http import HttpResponse
    from django_ses.views import SESEventWebhookView

    class RelayEventWebhookView(SESEventWebhookView):
        def post(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            ts = request.headers.get("X-Relay-Timestamp", "")
            mac = hmac.new(settings.RELAY_WEBHOOK_SECRET.encode(), ts.encode() + b"." + request.body, hashlib.sha256)
            if not (ts.isdigit() and abs(time.time() - int(ts)) <= 300
                    and hmac.compare_digest("v1=" + mac.hexdigest(), request.headers.get("X-Relay-Signature", ""))):
                return HttpResponse(status=401)  # not from relay, altered, or replayed
            return super().post(request, *args, **kwargs)

    return RelayEventWebhookView


def _urls() -> list[Any]:
    from anymail.webhooks.amazon_ses import AmazonSESTrackingWebhookView
    from django.urls import path

    return [
        path("ses/event-webhook/", _relay_view().as_view()),
        path("anymail/amazon_ses/tracking/", AmazonSESTrackingWebhookView.as_view()),
    ]


urlpatterns: list[Any] = []


class DjangoServer:
    """Django's threaded development server (django.core.servers.basehttp) in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._httpd: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import django
        from django.conf import settings
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
        from django.core.wsgi import get_wsgi_application

        if not settings.configured:
            settings.configure(**SETTINGS)
            django.setup()
        urlpatterns[:] = _urls()
        self._httpd = ThreadedWSGIServer(("127.0.0.1", self.port), WSGIRequestHandler, allow_reuse_address=True)
        self._httpd.set_app(get_wsgi_application())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="django-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
