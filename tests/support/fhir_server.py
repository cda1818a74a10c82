"""An in-test FHIR R4 server (aiohttp, port 0) for the puller: search paging, Bulk Data, SMART auth.

Chosen over a real server (HAPI FHIR needs a Spring Boot assembly of dozens of jars and a JPA
database; far too heavy for a 2-core machine shared by six engineers) and kept faithful to the specs
the puller relies on:

- search: ``GET /fhir/<type>`` with ``_lastUpdated`` (repeatable, prefixes eq/ne/gt/ge/lt/le/sa/eb),
  ``_sort=_lastUpdated`` or ``-_lastUpdated``, ``_count``; answers a ``searchset`` Bundle with
  ``total``, ``link`` self/next and ``search.mode=match`` entries. Paging is over a snapshot taken at
  the first page (as HAPI's ``_getpages``), so resources written meanwhile do not shift pages.
- Bulk Data: ``GET /fhir/$export`` needs ``Prefer: respond-async`` → 202 + Content-Location; the status
  URL answers 202 with Retry-After and X-Progress for ``polls_before_ready`` polls, then 200 with the
  manifest (transactionTime, request, requiresAccessToken, output[type,url,count], error); NDJSON files;
  DELETE cancels/removes the job (202), after which status answers 404. ``_since`` keeps resources
  updated strictly after it, ``_type`` filters types.
- SMART Backend Services: ``/.well-known/smart-configuration`` and a token endpoint that verifies the
  client assertion (RS384/ES384 signature with the registered public key, iss = sub = client_id,
  aud = token URL, exp within 5 minutes, jti never reused).
- knobs: ``fail_next(n, status, retry_after)`` answers the next n requests with an error,
  ``expire_tokens()`` makes every issued token answer 401, ``page_delay_s``, ``polls_before_ready``.
"""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from affluent.sim import synthetic

Resource = dict[str, Any]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
FHIR_JSON = "application/fhir+json"


def fhir_instant(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def matches(value: datetime, criterion: str) -> bool:
    prefix, rest = (criterion[:2], criterion[2:]) if criterion[:2].isalpha() else ("eq", criterion)
    bound = parse_instant(rest)
    return {
        "eq": value == bound,
        "ne": value != bound,
        "gt": value > bound,
        "sa": value > bound,
        "ge": value >= bound,
        "lt": value < bound,
        "eb": value < bound,
        "le": value <= bound,
    }[prefix]


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def synthetic_patient(index: int, rng: random.Random) -> Resource:
    p = synthetic.patient(rng, index)
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": f"urn:oid:{synthetic.INS_TEST_OID}", "value": p.nir},
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PI"}]
                },
                "system": f"urn:oid:{synthetic.HOSPITAL_OID}",
                "value": p.ipp,
            },
        ],
        "name": [{"family": p.family.title(), "given": [p.given]}],
        "gender": "male" if p.sex == "M" else "female",
        "birthDate": f"{p.birth[:4]}-{p.birth[4:6]}-{p.birth[6:]}",
    }


def synthetic_observation(index: int, rng: random.Random, patients: int) -> Resource:
    code, label, unit, low, high = rng.choice(synthetic.LAB)
    value = round(rng.uniform(low * 0.8, high * 1.2), 2)
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": label}]},
        "subject": {"reference": f"Patient/pat-{rng.randrange(max(patients, 1))}"},
        "effectiveDateTime": "2026-03-15T08:12:00+01:00",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


@dataclass
class ExportJob:
    types: list[str]
    since: datetime | None
    transaction_time: str
    files: dict[str, tuple[str, bytes]]  # file name -> (type, NDJSON)
    request: str
    polls: int = 0


@dataclass
class FhirTestServer:
    """Holds resources per type; ``add`` stamps id, versionId and lastUpdated as a server does."""

    clients: dict[str, PublicKey] = field(default_factory=dict)  # SMART client_id -> public key
    static_tokens: set[str] = field(default_factory=set)
    require_auth: bool = False
    token_lifetime_s: int = 300
    page_delay_s: float = 0.0
    polls_before_ready: int = 2
    retry_after_s: int = 1
    file_lines: int = 1000
    requires_access_token: bool = True
    garbage_line: bytes | None = None  # appended to the first NDJSON file of each export
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    resources: dict[str, dict[str, Resource]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) seen
    token_requests: int = 0
    refused: int = 0  # requests answered 401
    queries: list[dict[str, str]] = field(default_factory=list)  # query strings of kick-offs and searches
    base_url: str = ""
    _failures: list[tuple[int, str | None, str]] = field(default_factory=list)
    _issued: dict[str, float] = field(default_factory=dict)
    _jtis: set[str] = field(default_factory=set)
    _searches: dict[str, list[Resource]] = field(default_factory=dict)
    _jobs: dict[str, ExportJob] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _next_stamp: datetime = field(default_factory=lambda: datetime(2026, 3, 1, 8, 0, tzinfo=UTC))

    # --- content -----------------------------------------------------------------------------------
    def add(self, resource: Resource, last_updated: datetime | None = None) -> Resource:
        """Store a resource (a new version when its id exists), stamping meta as a FHIR server does."""
        rtype = resource["resourceType"]
        by_id = self.resources.setdefault(rtype, {})
        rid = resource.setdefault("id", f"{rtype[:3].lower()}-{len(by_id)}")
        previous = by_id.get(rid)
        version = int(previous["meta"]["versionId"]) + 1 if previous else 1
        stamp = last_updated or self.tick()
        resource["meta"] = {"versionId": str(version), "lastUpdated": fhir_instant(stamp)}
        by_id[rid] = resource
        return resource

    def tick(self, step: timedelta = timedelta(milliseconds=1)) -> datetime:
        """The next lastUpdated: strictly increasing and never behind the clock, so that a resource
        added after an export's transactionTime is newer than it (as on a real server)."""
        self._next_stamp = max(self._next_stamp + step, self.clock())
        return self._next_stamp

    def seed(self, rtype: str, count: int, per_instant: int = 1, seed: int = 7) -> list[Resource]:
        """``count`` synthetic resources; every ``per_instant`` consecutive ones share one lastUpdated."""
        rng = random.Random(seed)
        made = []
        stamp = self.tick()
        start = len(self.resources.get(rtype, {}))
        for n in range(count):
            if n and n % per_instant == 0:
                stamp = self.tick()
            index = start + n
            if rtype == "Patient":
                body = synthetic_patient(index, rng)
                body["id"] = f"pat-{index}"
            else:
                body = synthetic_observation(index, rng, len(self.resources.get("Patient", {})))
                body["id"] = f"{rtype[:3].lower()}-{index}"
            made.append(self.add(body, stamp))
        return made

    def all(self, rtype: str) -> list[Resource]:
        return list(self.resources.get(rtype, {}).values())

    # --- knobs -------------------------------------------------------------------------------------
    def fail_next(self, count: int, status: int, retry_after: str | None = None, path: str = "") -> None:
        """Answer the next ``count`` requests whose path contains ``path`` with ``status``."""
        self._failures.extend([(status, retry_after, path)] * count)

    def expire_tokens(self) -> None:
        self._issued.clear()

    # --- HTTP --------------------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/fhir/.well-known/smart-configuration", self._smart_configuration)
        app.router.add_post("/auth/token", self._token)
        app.router.add_get("/fhir/$export", self._kickoff)
        app.router.add_get("/bulkstatus/{job}", self._status)
        app.router.add_delete("/bulkstatus/{job}", self._delete)
        app.router.add_get("/bulkfiles/{job}/{name}", self._file)
        app.router.add_get("/fhir/{type}", self._search)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return f"{self.base_url}/fhir"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        for i, (status, retry_after, path) in enumerate(self._failures):
            if path in request.path:
                del self._failures[i]
                headers = {"Retry-After": retry_after} if retry_after is not None else {}
                return _outcome(status, "transient", "injected failure", headers)
        public = request.path.startswith("/auth/") or request.path.endswith("smart-configuration")
        if self.require_auth and not public and not self._authorised(request):
            self.refused += 1
            return _outcome(401, "login", "missing or expired bearer token")
        if self.page_delay_s and request.path.startswith("/fhir/"):
            import asyncio

            await asyncio.sleep(self.page_delay_s)
        result: web.StreamResponse = await handler(request)
        return result

    def _authorised(self, request: web.Request) -> bool:
        if request.path.startswith("/bulkfiles/") and not self.requires_access_token:
            return True
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        token = header[7:]
        if token in self.static_tokens:
            return True
        expires = self._issued.get(token)
        return expires is not None and expires > time.time()

    async def _search(self, request: web.Request) -> web.Response:
        rtype = request.match_info["type"]
        self.queries.append(dict(request.query))
        if rtype not in self.resources:
            return _outcome(404, "not-found", f"unknown resource type {rtype}")
        query = request.query
        count = int(query.get("_count", "50"))
        if "_getpages" in query:
            snapshot = self._searches.get(query["_getpages"])
            if snapshot is None:
                return _outcome(410, "not-found", "search expired")
            search_id, offset = query["_getpages"], int(query.get("_offset", "0"))
        else:
            try:
                criteria = query.getall("_lastUpdated", [])
                found = [
                    r
                    for r in self.resources[rtype].values()
                    if all(matches(parse_instant(r["meta"]["lastUpdated"]), c) for c in criteria)
                ]
            except (ValueError, KeyError):
                return _outcome(400, "invalid", "bad _lastUpdated")
            sort = query.get("_sort")
            if sort in ("_lastUpdated", "-_lastUpdated"):
                found.sort(
                    key=lambda r: parse_instant(r["meta"]["lastUpdated"]), reverse=sort.startswith("-")
                )
            search_id, offset = uuid.uuid4().hex, 0
            self._searches[search_id] = snapshot = found
        page = snapshot[offset : offset + count]
        links = [{"relation": "self", "url": str(request.url)}]
        if offset + count < len(snapshot):
            nxt = (
                f"{self.base_url}/fhir/{rtype}?_getpages={search_id}&_offset={offset + count}&_count={count}"
            )
            links.append({"relation": "next", "url": nxt})
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(snapshot),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{self.base_url}/fhir/{rtype}/{r.get('id', '')}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page
            ],
        }
        return web.json_response(bundle, content_type=FHIR_JSON, dumps=_dumps)

    async def _kickoff(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if request.headers.get("Prefer") != "respond-async":
            return _outcome(400, "invalid", "Prefer: respond-async is required")
        types = [t for t in request.query.get("_type", ",".join(self.resources)).split(",") if t]
        since = parse_instant(request.query["_since"]) if "_since" in request.query else None
        transaction_time = fhir_instant(self.clock())
        files: dict[str, tuple[str, bytes]] = {}
        for rtype in types:
            chosen = [
                r
                for r in self.resources.get(rtype, {}).values()
                if since is None or parse_instant(r["meta"]["lastUpdated"]) > since
            ]
            for n in range(0, len(chosen), self.file_lines):
                lines = [_dumps(r) for r in chosen[n : n + self.file_lines]]
                files[f"{rtype}-{n // self.file_lines}.ndjson"] = (rtype, ("\n".join(lines) + "\n").encode())
        if self.garbage_line is not None and files:
            name = next(iter(files))
            files[name] = (files[name][0], files[name][1] + self.garbage_line + b"\n")
        job = uuid.uuid4().hex
        self._jobs[job] = ExportJob(types, since, transaction_time, files, str(request.url))
        return web.Response(status=202, headers={"Content-Location": f"{self.base_url}/bulkstatus/{job}"})

    async def _status(self, request: web.Request) -> web.Response:
        job = self._jobs.get(request.match_info["job"])
        if job is None:
            return _outcome(404, "not-found", "no such export")
        if job.polls < self.polls_before_ready:
            job.polls += 1
            progress = f"{100 * job.polls // (self.polls_before_ready + 1)}% done"
            return web.Response(
                status=202, headers={"Retry-After": str(self.retry_after_s), "X-Progress": progress}
            )
        key = request.match_info["job"]
        manifest = {
            "transactionTime": job.transaction_time,
            "request": job.request,
            "requiresAccessToken": self.requires_access_token,
            "output": [
                {"type": rtype, "url": f"{self.base_url}/bulkfiles/{key}/{name}", "count": body.count(b"\n")}
                for name, (rtype, body) in job.files.items()
            ],
            "error": [],
        }
        return web.json_response(manifest)

    async def _delete(self, request: web.Request) -> web.Response:
        if self._jobs.pop(request.match_info["job"], None) is None:
            return _outcome(404, "not-found", "no such export")
        return web.Response(status=202)

    async def _file(self, request: web.Request) -> web.Response:
        job = self._jobs.get(request.match_info["job"])
        if job is None or request.match_info["name"] not in job.files:
            return _outcome(404, "not-found", "no such file")
        return web.Response(
            body=job.files[request.match_info["name"]][1], content_type="application/fhir+ndjson"
        )

    async def _smart_configuration(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "token_endpoint": f"{self.base_url}/auth/token",
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                "scopes_supported": ["system/*.read"],
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return _oauth_error("unsupported_grant_type")
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return _oauth_error("invalid_client")
        problem = self.check_assertion(str(form.get("client_assertion", "")), f"{self.base_url}/auth/token")
        if problem:
            return _oauth_error("invalid_client", problem)
        token = uuid.uuid4().hex
        self._issued[token] = time.time() + self.token_lifetime_s
        return web.json_response(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": self.token_lifetime_s,
                "scope": form.get("scope"),
            }
        )

    def check_assertion(self, assertion: str, audience: str) -> str | None:
        """None when the assertion is valid, else why not (SMART Backend Services rules)."""
        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(sig_b64)
        except ValueError:
            return "malformed assertion"
        key = self.clients.get(str(claims.get("iss")))
        if key is None or claims.get("sub") != claims.get("iss"):
            return "unknown client"
        signed = f"{head_b64}.{claims_b64}".encode()
        try:
            if header.get("alg") == "RS384" and isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA384())
            elif header.get("alg") == "ES384" and isinstance(key, ec.EllipticCurvePublicKey):
                if len(signature) != 96:
                    return "bad ES384 signature length"
                der = encode_dss_signature(
                    int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
                )
                key.verify(der, signed, ec.ECDSA(hashes.SHA384()))
            else:
                return "algorithm does not fit the registered key"
        except InvalidSignature:
            return "bad signature"
        now = time.time()
        if claims.get("aud") != audience:
            return "wrong audience"
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now or exp > now + 310:
            return "bad exp"
        jti = claims.get("jti")
        if not jti or jti in self._jtis:
            return "jti reused"
        self._jtis.add(jti)
        return None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _outcome(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return web.json_response(body, status=status, headers=headers, content_type=FHIR_JSON)


def _oauth_error(error: str, description: str = "") -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)
