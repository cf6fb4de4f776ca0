"""Schemathesis hooks for the admin API's contract test (tests/integration/contract.rs).

The OpenAPI document names a `format` for every string whose grammar a regular expression
cannot state (docs/api.md, "Formats"). A client that does not know a format sees a string;
here each gets a generator of values in that grammar, so schema-valid cases are valid.

One rule relates a path parameter to the body, which JSON Schema cannot say: the name in
`PUT /v1/policies/{name}` (and secrets) is the body's `name`. `map_case` keeps them equal.
"""

import datetime
from urllib.parse import quote

import jsonschema_rs
import schemathesis
from hypothesis import strategies as st

# The grammars named by `format` in the document. A generator covers part of each; what it
# does not produce is not therefore outside the grammar.
GRAMMARS = {
    "host-pattern", "path-glob", "glob", "cel", "rust-regex", "duration-text",
    "credential-template", "message-template", "absolute-url", "authority",
    "time-or-duration", "cursor", "grant-duration", "utc-time",
}

LABEL = st.from_regex(r"\A[a-z][a-z0-9-]{0,8}[a-z0-9]\Z")
DOMAIN = st.lists(LABEL, min_size=2, max_size=3).map(".".join)

schemathesis.openapi.format(
    "host-pattern",
    st.one_of(
        DOMAIN,
        DOMAIN.map(lambda d: "*." + d),
        DOMAIN.map(lambda d: "api-*." + d),
        st.tuples(DOMAIN, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
        st.sampled_from(["*", "10.0.0.0/8", "127.0.0.1", "fd00::/8", "[::1]:8443"]),
    ),
)
schemathesis.openapi.format("path-glob", st.from_regex(r"\A/[a-z0-9_.*/-]{0,24}\Z"))
schemathesis.openapi.format("glob", st.from_regex(r"\A[a-z_][a-z0-9_*]{0,15}\Z"))
schemathesis.openapi.format(
    "cel",
    st.sampled_from(
        [
            'agent.slug == "claude-code"',
            'identity.labels.env == "prod"',
            'request.method == "GET"',
            "request.port == 443",
            'identity.tags.exists(t, t.startsWith("team:"))',
            'request.path.startsWith("/v1/") && request.host.endsWith(".example.com")',
        ]
    ),
)
schemathesis.openapi.format(
    "rust-regex", st.sampled_from(["secret", "^[a-z]+$", "(?i)token=[0-9a-f]{8}", "a|b"])
)
schemathesis.openapi.format("duration-text", st.from_regex(r"\A[1-9][0-9]{0,3}(s|m|h|d)\Z"))
# Within the gateway's approvals.max_grant_for (7d by default).
schemathesis.openapi.format("grant-duration", st.from_regex(r"\A[1-9][0-9]{0,1}(s|m|h)\Z"))
schemathesis.openapi.format(
    "utc-time",
    st.datetimes(
        min_value=datetime.datetime(2000, 1, 1),
        max_value=datetime.datetime(2099, 12, 31),
    ).map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")),
)
schemathesis.openapi.format(
    "credential-template",
    st.sampled_from(["{{ value }}", "Bearer {{ value }}", "{{ base64 value }}", "t={{ .Value }}"]),
)
schemathesis.openapi.format(
    "message-template",
    st.sampled_from(
        ["{{ method }} {{ path }}", "{{ timestamp }}.{{ body_sha256 }}", "{{ host }}{{ query }}"]
    ),
)

schemathesis.openapi.format(
    "absolute-url",
    st.tuples(
        st.sampled_from(["http", "https"]), DOMAIN, st.from_regex(r"\A(/[a-z0-9._~-]{0,12}){0,3}\Z")
    ).map(lambda t: f"{t[0]}://{t[1]}{t[2]}"),
)
schemathesis.openapi.format(
    "authority", st.tuples(DOMAIN, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}")
)
schemathesis.openapi.format(
    "time-or-duration",
    st.one_of(
        st.from_regex(r"\A[1-9][0-9]{0,2}(m|h|d)\Z"),
        st.sampled_from(["2026-12-01T10:00:00Z", "2026-11-30T23:59:59.5+01:00"]),
    ),
)
# A cursor is whatever a page returned as next_cursor: base64url of "<ts>\n<request id>".
schemathesis.openapi.format(
    "cursor",
    st.sampled_from(["MjAyNi0xMi0wMVQxMDowMDowMFoKcmVxLTE", "MjAyNi0xMS0zMFQwMDowMDowMFoKYQ"]),
)


@schemathesis.hook
def map_case(context, case):
    if case.method == "PUT" and isinstance(case.body, dict) and case.path_parameters:
        kind = "policy" if "/policies/" in case.path else "secret"
        definition = case.body.get(kind)
        if isinstance(definition, dict) and isinstance(definition.get("name"), str):
            # Path parameters are sent as given: a name holds `?`, `#` or `/` at times.
            case.path_parameters["name"] = quote(definition["name"], safe="")
    return case


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps a "schema-violating request accepted" only if the body violates the schema in
    something besides a grammar format.

    To find inputs outside a custom format, schemathesis draws any string and counts it as
    outside (it cannot know the grammar), so an accepted `a|b` drawn for a `rust-regex`
    field reads as a violation. Such a body is checked again with the grammar formats read
    as the annotations JSON Schema makes of unknown formats; every other keyword (types,
    patterns, required fields, standard formats) still counts. The server checks the
    grammars themselves, with their own tests beside the code.
    """
    if type(failure).__name__ != "AcceptedNegativeData" or not isinstance(case.body, dict):
        return True
    operation = case.operation.definition.raw
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    if "schema" not in body:
        return True
    schema = dict(body["schema"], components=case.operation.schema.raw_schema["components"])
    validator = jsonschema_rs.Draft202012Validator(
        schema, validate_formats=True, formats={name: (lambda _: True) for name in GRAMMARS}
    )
    return not validator.is_valid(case.body)
