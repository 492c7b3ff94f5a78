"""A product page on FastAPI, served by uvicorn, that keeps answering while its dependencies fail.

``GET /product/<id>`` calls four services over HTTP with ``httpx.AsyncClient``: details,
reviews, pricing and recommendations (base URLs from ``DETAILS_URL``, ``REVIEWS_URL``,
``PRICING_URL`` and ``RECOMMENDATIONS_URL``). With recommendations down the page still
answers 200, with "popular items" in their place and ``X-Degraded: recommendations``; with
pricing's circuit open it answers 503 with ``Retry-After``. Run it with::

    uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

import otelres
from otelres.asgi import ResilienceMiddleware
from otelres.health import Readiness, http_check

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# Before any client is made: breakers and retries for every httpx call.
otelres.instrument()

DETAILS_URL = os.environ.get("DETAILS_URL", "http://127.0.0.1:8001")
REVIEWS_URL = os.environ.get("REVIEWS_URL", "http://127.0.0.1:8002")
PRICING_URL = os.environ.get("PRICING_URL", "http://127.0.0.1:8003")
RECOMMENDATIONS_URL = os.environ.get("RECOMMENDATIONS_URL", "http://127.0.0.1:8004")
#: Each call's own timeout; the request's deadline shrinks it further.
TIMEOUT = 2.0

# Recommendations are optional: when they fail (their circuit is open, or the call's
# retries are spent) the page shows popular items instead, and says so in X-Degraded.
# The degraded part's name is chosen here, for clients to read: the middleware never
# puts a breaker's name (an internal address) in X-Degraded unless it shows details.
recommendations = otelres.Resilience(
    "recommendations",
    retry=otelres.RetryPolicy(attempts=1),  # the patched client already retries each request
)

clients: dict[str, httpx.AsyncClient] = {}


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """One connection pool for the process's life."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        clients["http"] = client
        yield
        clients.clear()


async def fetch(base: str, path: str) -> Any:
    """GET a service's JSON; an error status raises."""
    response = await clients["http"].get(base + path)
    response.raise_for_status()
    return response.json()


@otelres.degrade(["popular items"], name="recommendations")
@recommendations
async def fetch_recommendations(product_id: str) -> Any:
    """The recommendations for a product (popular items when the service is down)."""
    return await fetch(RECOMMENDATIONS_URL, f"/recommendations/{product_id}")


app = FastAPI(lifespan=lifespan)


@app.get("/product/{product_id}", response_model=None)
async def product(product_id: str) -> dict[str, Any] | JSONResponse:
    """The product page: details, reviews and pricing are required, recommendations are not."""
    try:
        page = {
            "details": await fetch(DETAILS_URL, f"/details/{product_id}"),
            "reviews": await fetch(REVIEWS_URL, f"/reviews/{product_id}"),
            "pricing": await fetch(PRICING_URL, f"/pricing/{product_id}"),
        }
    except otelres.CircuitOpenError:
        # A rejection by an open circuit is also the client's own connection error: let it
        # reach otelres's middleware, which answers 503 with Retry-After.
        raise
    except httpx.TimeoutException:
        return JSONResponse({"error": "an upstream service timed out"}, status_code=504)
    except httpx.HTTPError as exc:
        return JSONResponse({"error": f"an upstream service failed: {type(exc).__name__}"}, status_code=502)
    page["recommendations"] = await fetch_recommendations(product_id)
    return page


readiness = Readiness()
readiness.add("details", http_check(f"{DETAILS_URL}/health", timeout=1.0), critical=True)
readiness.add("recommendations", http_check(f"{RECOMMENDATIONS_URL}/health", timeout=1.0), critical=False)

# /livez, /readyz, the 503 mapping and a per-request deadline: 1 s, or less when the
# caller's X-Request-Timeout asks for less. That header is off unless named: name it only
# behind a proxy that sets or strips it (any client could shorten its requests and make
# calls time out). Responses name no breaker, check or error (show_details=False): the
# 503 body is {"error": "dependency unavailable"} and /readyz gives the overall status.
# Added with add_middleware, not wrapped around the app: Starlette's outermost
# ServerErrorMiddleware answers any uncaught error with a 500 before an outer wrapper could
# see it; inside it, the CircuitOpenError reaches otelres.
app.add_middleware(
    ResilienceMiddleware,
    readiness=readiness,
    deadline=1.0,
    deadline_header="X-Request-Timeout",
    max_deadline=5.0,
)
