"""What the edge (the local canary's nginx, the compose nginx, the Ingresses, the HTTPRoute) lets
through: the service's own routes and nothing else, and the headers it adds to every answer.

One list for every edge, so that a route added to service.py is added here once (tests/test_edge.py
checks the list against the running app's routes). Every other path is answered by the edge itself:
it never reaches a backend, so it cannot become a Prometheus series or cost a worker anything.
`/metrics` is not here: Prometheus scrapes each backend's port directly.
"""

from __future__ import annotations

from dataclasses import dataclass

# The page and the API's GET routes (the FastAPI app mounted on the service), BentoML's probes and
# its Swagger page (/docs is ours, it loads /docs.json and /static_content/ from BentoML).
READ_PATHS = (
    "/",
    "/docs",
    "/docs.json",
    "/metadata",
    "/zones",
    "/boroughs",
    "/history",
    "/readyz",
    "/livez",
    "/healthz",
)
# The BentoML APIs: POST only.
WRITE_PATHS = ("/predict", "/route", "/outlook")
# Folders of files (the page's own, Swagger's): GET under the prefix.
READ_PREFIXES = ("/static/", "/static_content/")
READ_METHODS = ("GET", "HEAD")
WRITE_METHODS = ("POST",)

# The page and Swagger load only their own files and run only their own scripts; `data:` images are
# the page's empty favicon and Swagger's CSS icons. Inline styles are allowed: the map page (in
# headless Chromium, with real data) and Swagger's page write some, and a style runs no code.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
TRAFFIC_HEADER = "X-VZ-Traffic"  # "split" or "pinned": the canary monitor counts split traffic


@dataclass(frozen=True)
class Route:
    """One path the edge forwards: exact, or a folder (prefix); the methods it answers."""

    path: str
    methods: tuple[str, ...]
    prefix: bool = False


ROUTES = (
    *(Route(path, READ_METHODS) for path in READ_PATHS),
    *(Route(path, WRITE_METHODS) for path in WRITE_PATHS),
    *(Route(path, READ_METHODS, prefix=True) for path in READ_PREFIXES),
)
