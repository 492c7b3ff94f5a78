"""A product page on Django (one file: settings, URLs and the WSGI application), served by
gunicorn, that keeps answering while its dependencies fail.

``GET /product/<id>`` calls four services over HTTP with ``requests``: details, reviews,
pricing and recommendations (base URLs from ``DETAILS_URL``, ``REVIEWS_URL``, ``PRICING_URL``
and ``RECOMMENDATIONS_URL``). With recommendations down the page still answers 200, with
"popular items" in their place and ``X-Degraded: recommendations``; with pricing's circuit
open it answers 503 with ``Retry-After``. Run it with::

    gunicorn -w 2 -k gthread --threads 8 examples.django_app:application
"""

from __future__ import annotations

import os
from typing import Any

import requests
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

import otelres
from otelres.health import Readiness, http_check
from otelres.wsgi import ResilienceMiddleware

# Before any request is made: breakers and retries for every `requests` call.
otelres.instrument()

DETAILS_URL = os.environ.get("DETAILS_URL", "http://127.0.0.1:8001")
REVIEWS_URL = os.environ.get("REVIEWS_URL", "http://127.0.0.1:8002")
PRICING_URL = os.environ.get("PRICING_URL", "http://127.0.0.1:8003")
RECOMMENDATIONS_URL = os.environ.get("RECOMMENDATIONS_URL", "http://127.0.0.1:8004")
#: Each call's own timeout; the request's deadline shrinks it further.
TIMEOUT = 2.0

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "an-example-that-signs-nothing"),
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    # Let an uncaught CircuitOpenError reach otelres's middleware (which answers 503 with
    # Retry-After) instead of Django's own handler (a 500 and an ERROR traceback).
    DEBUG_PROPAGATE_EXCEPTIONS=True,
)

# Recommendations are optional: when they fail (their circuit is open, or the call's
# retries are spent) the page shows popular items instead, and says so in X-Degraded.
# The degraded part's name is chosen here, for clients to read: the middleware never
# puts a breaker's name (an internal address) in X-Degraded unless it shows details.
recommendations = otelres.Resilience(
    "recommendations",
    retry=otelres.RetryPolicy(attempts=1),  # the patched client already retries each request
)


def fetch(base: str, path: str) -> Any:
    """GET a service's JSON; an error status raises."""
    response = requests.get(base + path, timeout=TIMEOUT)
    response.raise_for_status()
    return response.json()


@otelres.degrade(["popular items"], name="recommendations")
@recommendations
def fetch_recommendations(product_id: str) -> Any:
    """The recommendations for a product (popular items when the service is down)."""
    return fetch(RECOMMENDATIONS_URL, f"/recommendations/{product_id}")


def product(request: HttpRequest, product_id: str) -> JsonResponse:  # noqa: ARG001 - Django's view signature
    """The product page: details, reviews and pricing are required, recommendations are not."""
    try:
        page = {
            "details": fetch(DETAILS_URL, f"/details/{product_id}"),
            "reviews": fetch(REVIEWS_URL, f"/reviews/{product_id}"),
            "pricing": fetch(PRICING_URL, f"/pricing/{product_id}"),
        }
    except otelres.CircuitOpenError:
        # A rejection by an open circuit is also the client's own connection error: let it
        # reach otelres's middleware, which answers 503 with Retry-After.
        raise
    except requests.Timeout:
        return JsonResponse({"error": "an upstream service timed out"}, status=504)
    except requests.RequestException as exc:
        return JsonResponse({"error": f"an upstream service failed: {type(exc).__name__}"}, status=502)
    page["recommendations"] = fetch_recommendations(product_id)
    return JsonResponse(page)


urlpatterns = [path("product/<str:product_id>", product)]

readiness = Readiness()
readiness.add("details", http_check(f"{DETAILS_URL}/health", timeout=1.0), critical=True)
readiness.add("recommendations", http_check(f"{RECOMMENDATIONS_URL}/health", timeout=1.0), critical=False)

# /livez, /readyz, the 503 mapping and a per-request deadline: 1 s, or less when the
# caller's X-Request-Timeout asks for less. That header is off unless named: name it only
# behind a proxy that sets or strips it (any client could shorten its requests and make
# calls time out). Responses name no breaker, check or error (show_details=False): the
# 503 body is {"error": "dependency unavailable"} and /readyz gives the overall status.
application = ResilienceMiddleware(
    get_wsgi_application(),
    readiness=readiness,
    deadline=1.0,
    deadline_header="X-Request-Timeout",
    max_deadline=5.0,
)
