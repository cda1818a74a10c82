"""The FHIR REST door's HTTP shell (aiohttp): authenticate, read, plan, commit, answer.

**Where the 2xx is decided**: every handler builds its 200/201 only after :meth:`FhirRestServer._commit`
(:meth:`Committer.commit`) returned, i.e. after Kafka's delivery reports (``acks=all``) for the raw
records and their idempotency entries; a Kafka failure becomes 503 with ``Retry-After`` (``_guarded``).
Everything else (what to store, what to refuse) is decided by the pure modules :mod:`intake` and
:mod:`notification`; the sender comes only from :mod:`auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web

from affluent.core.errors import KafkaUnavailable
from affluent.core.limits import serve_limited
from affluent.core.settings import FhirRestSettings
from connectors.fhir_rest import fetch, intake
from connectors.fhir_rest.auth import SENDER_HEADER, Authenticator, Sender, Unauthenticated
from connectors.fhir_rest.commit import Answer, Committer, if_none_exist_key, payload_digest
from connectors.fhir_rest.intake import Item, Plan, Refusal
from connectors.fhir_rest.metrics import FhirRestMetrics
from connectors.fhir_rest.notification import read_notification
from connectors.raw import RawMessage
from formats.fhir.common import (
    RESPONSE_CONTENT_TYPE,
    Issue,
    media_type_accepted,
    operation_outcome,
)
from formats.fhir.validate import entry_cap

log = logging.getLogger(__name__)

NOTIFICATION_PATH = "subscription-notification"
TLS_SUBJECT: web.RequestKey[str | None] = web.RequestKey("tls_subject")  # read once per request
Handler = Callable[[web.Request, Sender, bytes], Awaitable[web.Response]]


def fhir_response(
    status: int, body: Mapping[str, Any] | None, headers: Mapping[str, str] | None = None
) -> web.Response:
    text = json.dumps(body, ensure_ascii=False) if body is not None else None
    return web.Response(
        status=status,
        text=text,
        headers={**(headers or {}), **({"Content-Type": RESPONSE_CONTENT_TYPE} if text is not None else {})},
    )


def outcome_response(
    status: int, issues: tuple[Issue, ...], headers: Mapping[str, str] | None = None
) -> web.Response:
    return fhir_response(status, operation_outcome(issues), headers)


def tls_subject(request: web.Request) -> str | None:
    """The client certificate's one CN, read as every door reads it (affluent/core/tls.py)."""
    from affluent.core.tls import subject_cn

    transport = request.transport
    return subject_cn(transport.get_extra_info("peercert") if transport is not None else None)


class Resolved(NamedTuple):
    """What :meth:`FhirRestServer._resolve` decided for one message."""

    earlier: Answer | None  # the answer to replay, or None: store it
    message: RawMessage  # with its digest in raw_id and attributes when a version id was reused
    keys: list[str]  # the resend-index keys to write with it
    digest: str  # of the payload, for the answers stored


class FhirRestServer:
    def __init__(
        self,
        settings: FhirRestSettings,
        committer: Committer,
        authenticator: Authenticator,
        metrics: FhirRestMetrics,
    ) -> None:
        self.settings = settings
        self.committer = committer
        self.auth = authenticator
        self.metrics = metrics
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pool: ProcessPoolExecutor | None = None
        self.port: int | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        cap = self.settings.max_bundle_entries

        @web.middleware
        async def capped(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            """Every Bundle this request brings (posted, to /Bundle, or a notification) is capped."""
            with entry_cap(cap):
                return await handler(request)

        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[_outcome_errors, capped]
        )
        base = self.settings.base_path
        app.router.add_get(f"{base}/metadata", self._metadata)
        app.router.add_post(base, self._route("bundle", self._bundle))
        app.router.add_post(f"{base}/{NOTIFICATION_PATH}", self._route("notification", self._notification))
        app.router.add_post(base + "/{type}", self._route("resource", self._create))
        app.router.add_put(base + "/{type}/{id}", self._route("resource", self._update))
        app.router.add_delete(base + "/{type}/{id}", self._route("resource", self._delete, needs_body=False))
        return app

    async def start(self) -> int:
        self._session = aiohttp.ClientSession()
        if self.settings.validation_processes:
            self._pool = await start_validation_pool(self.settings.validation_processes)
        self._runner, self.port = await serve_limited(
            self.app(),
            self.settings.host,
            self.settings.port,
            self.settings.limits,
            lambda reason: self.metrics.connections_refused.labels("fhir", reason).inc(),
            tls_context(self.settings),
        )
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # finishes in-flight requests first
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._pool is not None:  # its processes gone before stop returns: nothing outlives the door
            await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)
            self._pool = None

    async def _metadata(self, request: web.Request) -> web.Response:
        """The CapabilityStatement, unauthenticated like any FHIR server's: what a client may send."""
        return fhir_response(200, capability_statement(self.settings))

    # --- the common shell: auth, media type, size, errors, metrics -----------------------------------

    def _route(
        self, route: str, handler: Handler, needs_body: bool = True
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def run(request: web.Request) -> web.Response:
            started = time.perf_counter()
            response = await self._guarded(request, handler, needs_body)
            self.metrics.requests.labels(route, str(response.status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            return response

        return run

    async def _guarded(self, request: web.Request, handler: Handler, needs_body: bool) -> web.Response:
        try:
            sender = await self._sender(request)
            if needs_body and not media_type_accepted(request.content_type, request.charset):
                raise Refusal(415, Issue("not-supported", "send application/fhir+json in UTF-8"))
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise Refusal(
                    413, Issue("too-costly", f"the body exceeds {self.settings.max_body_bytes} bytes")
                ) from None
            return await handler(request, sender, body)
        except Unauthenticated as refusal:
            return outcome_response(401, refusal.issues, {"WWW-Authenticate": refusal.challenge})
        except Refusal as refusal:
            return outcome_response(refusal.status, refusal.issues)
        except KafkaUnavailable:
            log.warning("Kafka did not confirm a write: answered 503")
            return self._unavailable("Kafka did not confirm the write; nothing was accepted, retry later")
        except fetch.FetchFailed as exc:
            return self._unavailable(str(exc))
        except Exception as exc:  # a bug: the type only, since exception texts may quote the payload
            log.error("request failed with %s", type(exc).__name__)
            return outcome_response(500, (Issue("exception", "internal error; resending is safe"),))

    def _unavailable(self, reason: str) -> web.Response:
        return outcome_response(
            503, (Issue("transient", reason),), {"Retry-After": str(self.settings.retry_after_s)}
        )

    async def _sender(self, request: web.Request) -> Sender:
        request[TLS_SUBJECT] = tls_subject(request)
        args = (
            request.headers.get("Authorization"),
            request[TLS_SUBJECT],
            request.headers.get(SENDER_HEADER),
        )
        if self.auth.needs_thread:
            return await asyncio.to_thread(self.auth.authenticate, *args)
        return self.auth.authenticate(*args)

    # --- handlers ------------------------------------------------------------------------------------

    async def _create(self, request: web.Request, sender: Sender, body: bytes) -> web.Response:
        item = intake.resource_item(body, request.match_info["type"])
        return await self._store_one(request, sender, item)

    async def _update(self, request: web.Request, sender: Sender, body: bytes) -> web.Response:
        item = intake.resource_item(body, request.match_info["type"], request.match_info["id"])
        return await self._store_one(request, sender, item)

    def _keys(self, sender: Sender, message: RawMessage, item: Item, query: str | None) -> list[str]:
        """The index keys that make a later request a resend: its raw_id, and its If-None-Exist query."""
        keys = [message.raw_id]
        if query:
            keys.append(if_none_exist_key(sender.name, item.message_type, query))
        return keys

    def _resolve(self, message: RawMessage, keys: list[str]) -> Resolved:
        """Is this a resend? (the earlier answer, to replay), else the message and index keys to store,
        with the payload's digest (hashed once: the answers to store carry it).

        A resend has a known key *and* the same bytes. The same ``<type>/<id>/_history/<vid>`` from the
        same sender with other bytes is not one (a server that reuses version ids, or a sender trying
        to shadow a record): it is stored, counted, and gets its own raw_id, its own index entry, and
        (through its ``content_digest`` attribute) its own event ids. An If-None-Exist match is
        replayed whatever the bytes, as FHIR's conditional create says.
        """
        digest = payload_digest(message.payload)
        first = self.committer.earlier(keys[0])
        others = [self.committer.earlier(k) for k in keys[1:]]
        if first is not None and first.digest is not None and first.digest != digest:
            message = replace(
                message, digest=digest, attributes={**message.attributes, "content_digest": digest}
            )
            keys = [f"{keys[0]}|{digest}", *keys[1:]]
            first = self.committer.earlier(keys[0])
            if first is None and not any(others):
                self.metrics.version_reuse.labels(self.metrics.type_label(message.message_type or "")).inc()
        earlier = next((e for e in (first, *others) if e is not None), None)
        replay = None if earlier is None else Answer(200, earlier.location, earlier.version)
        return Resolved(replay, message, keys, digest)

    async def _delete(self, request: web.Request, sender: Sender, body: bytes) -> web.Response:
        if_match = request.headers.get("If-Match")
        item = intake.delete_item(request.match_info["type"], request.match_info["id"], if_match)
        return await self._store_one(request, sender, item)

    async def _store_one(self, request: web.Request, sender: Sender, item: Item) -> web.Response:
        message = self._message(request, sender, item)
        keys = self._keys(sender, message, item, request.headers.get("If-None-Exist"))
        earlier, message, keys, digest = self._resolve(message, keys)
        if earlier is not None:
            self.metrics.record(item.message_type, "duplicate")
            return self._created(request, earlier, None)
        hub_name = f"{item.message_type.split('/')[0]}/{message.raw_id[:32]}"  # no id given: the hub's
        answer = Answer(
            item.status,
            item.location or (None if item.status == 204 else hub_name),
            item.version,
            digest,
        )
        await self._commit([message], [(k, answer) for k in keys], [item.message_type])
        return self._created(request, answer, None)

    async def _bundle(self, request: web.Request, sender: Sender, body: bytes) -> web.Response:
        cap = self.settings.max_bundle_entries
        if self._pool is None:
            plan = plan_bundle(body, cap)
        else:
            plan = await asyncio.get_running_loop().run_in_executor(self._pool, plan_bundle, body, cap)
        if plan.kind == "batch":
            return await self._batch(request, sender, plan)
        [item] = plan.items
        message = self._message(request, sender, item)
        earlier, message, keys, digest = self._resolve(message, [message.raw_id])
        if earlier is None:
            answer = Answer(200, digest=digest)
            await self._commit([message], [(keys[0], answer)], [item.message_type])
        else:
            self.metrics.record(item.message_type, "duplicate")
        if plan.kind == "collection":
            info = Issue("informational", "the collection Bundle is stored", severity="information")
            return outcome_response(200, (info,))
        return fhir_response(200, self._response_bundle("transaction-response", plan, {}))

    async def _batch(self, request: web.Request, sender: Sender, plan: Plan) -> web.Response:
        messages: list[RawMessage] = []
        answers: list[tuple[str, Answer]] = []
        types: list[str] = []
        replayed: dict[int, Answer] = {}
        for entry in plan.entries:
            item = entry.item
            if item is None:
                self.metrics.record("other", "refused")
                continue
            message = self._message(request, sender, item)
            keys = self._keys(sender, message, item, item.if_none_exist)
            earlier, message, keys, digest = self._resolve(message, keys)
            if earlier is not None:
                replayed[entry.index] = earlier
                self.metrics.record(item.message_type, "duplicate")
                continue
            messages.append(message)
            answers += [(k, Answer(item.status, item.location, item.version, digest)) for k in keys]
            types.append(item.message_type)
        if messages:
            await self._commit(messages, answers, types)
        return fhir_response(200, self._response_bundle("batch-response", plan, replayed))

    async def _notification(self, request: web.Request, sender: Sender, body: bytes) -> web.Response:
        notification = read_notification(intake.parse(body))
        self.metrics.notifications.labels(notification.kind).inc()
        if not notification.carries_data:
            return fhir_response(200, None)
        payloads: list[bytes] = []
        for index, resource in notification.resources:
            payloads.append(self._entry_payload(index, resource))
        if notification.references:
            payloads += await self._fetch_all(sender, notification.references)
        items = [
            self._notified_item(p, "full-resource" if i < len(notification.resources) else "id-only")
            for i, p in enumerate(payloads)
        ]
        fresh: list[tuple[RawMessage, Item, str, str]] = []
        for item in items:
            message = self._message(request, sender, item)
            earlier, message, keys, digest = self._resolve(message, [message.raw_id])
            if earlier is None:
                fresh.append((message, item, keys[0], digest))
            else:
                self.metrics.record(item.message_type, "duplicate")
        if fresh:
            await self._commit(
                [m for m, _, _, _ in fresh],
                [(key, Answer(200, i.location, i.version, digest)) for _, i, key, digest in fresh],
                [i.message_type for _, i, _, _ in fresh],
            )
        return fhir_response(200, None)

    def _entry_payload(self, index: int, resource: dict[str, Any]) -> bytes:
        if resource.get("resourceType") not in intake.MAPPED_TYPES:
            raise Refusal(
                404,
                Issue("not-supported", "this resource type is not accepted here", f"Bundle.entry[{index}]"),
            )
        return json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    async def _fetch_all(self, sender: Sender, references: list[str]) -> list[bytes]:
        notifier = self.settings.notifiers.get(sender.name)
        if notifier is None:
            raise Refusal(
                422,
                Issue("not-supported", "id-only notifications need a configured notifier for this sender"),
            )
        if len(references) > notifier.max_references:
            raise Refusal(
                413,
                Issue(
                    "too-costly",
                    f"an id-only notification may name {notifier.max_references} resources at most",
                ),
            )
        urls = [fetch.resolve(ref, notifier) for ref in references]  # every one checked before any GET
        session = self._session
        assert session is not None
        max_bytes = notifier.max_fetch_bytes or self.settings.max_body_bytes
        gate = asyncio.Semaphore(fetch.CONCURRENCY)

        async def one(url: str) -> bytes:
            async with gate:
                return await fetch.fetch(session, url, notifier, max_bytes)

        return list(await asyncio.gather(*(one(url) for url in urls)))

    def _notified_item(self, payload: bytes, kind: str) -> Item:
        """Validated like a POSTed resource; its record says which payload kind brought it."""
        rtype = intake.parse(payload)["resourceType"]
        if rtype not in intake.MAPPED_TYPES:
            raise Refusal(404, Issue("not-supported", "a notified resource type is not accepted here"))
        item = intake.resource_item(payload, rtype)
        return replace(item, status=200, attributes={"subscription_payload": kind})

    # --- helpers -------------------------------------------------------------------------------------

    async def _commit(
        self, messages: list[RawMessage], answers: list[tuple[str, Answer]], types: list[str]
    ) -> None:
        try:
            await self.committer.commit(messages, answers)
        except KafkaUnavailable:
            for rtype in types:
                self.metrics.record(rtype, "kafka_unavailable")
            raise
        for rtype in types:
            self.metrics.record(rtype, "stored")

    def _message(self, request: web.Request, sender: Sender, item: Item) -> RawMessage:
        attributes = {"credential": sender.credential, "http_method": request.method, **item.attributes}
        subject = request.get(TLS_SUBJECT)
        if subject:
            attributes["tls_subject"] = subject
        return RawMessage(
            protocol="fhir",
            connector="fhir_rest",
            facility=sender.facility,
            application=sender.application,
            payload=item.payload,
            content_type="application/fhir+json",
            message_id=item.message_id,
            message_type=item.message_type,
            peer=request.remote,
            declared_charset="UTF-8",
            attributes=attributes,
        )

    def _created(self, request: web.Request, answer: Answer, body: Mapping[str, Any] | None) -> web.Response:
        headers: dict[str, str] = {}
        if answer.location:
            headers["Location"] = f"{request.url.origin()}{self.settings.base_path}/{answer.location}"
        if answer.version:
            headers["ETag"] = f'W/"{answer.version}"'
        return fhir_response(answer.status, body, headers)

    def _response_bundle(self, btype: str, plan: Plan, replayed: Mapping[int, Answer]) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for entry in plan.entries:
            response: dict[str, Any] = {}
            if entry.refusal is not None:
                response["status"] = str(entry.refusal.status)
                response["outcome"] = operation_outcome(entry.refusal.issues)
            else:
                answer = replayed.get(entry.index, Answer(entry.status, entry.location, entry.version))
                response["status"] = intake.status_text(answer.status)
                if answer.location:
                    response["location"] = answer.location
                if answer.version:
                    response["etag"] = f'W/"{answer.version}"'
            entries.append({"response": response})
        return {"resourceType": "Bundle", "type": btype, "entry": entries}


def plan_bundle(body: bytes, max_entries: int | None) -> Plan:
    """:func:`intake.bundle_plan` under the door's entry cap, passed explicitly: a validation process
    does not share the door's context."""
    with entry_cap(max_entries):
        return intake.bundle_plan(body)


async def start_validation_pool(processes: int) -> ProcessPoolExecutor:
    """Spawned (not forked: the door runs threads) and warmed up, so the first Bundle pays no imports."""
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(pool, _warm_up) for _ in range(processes)))
    return pool


def _warm_up() -> None:
    """Import and run the planner once in a pool process; the verdict on this empty Bundle is beside
    the point (it is refused: nothing in it is mapped)."""
    with contextlib.suppress(Refusal):
        plan_bundle(b'{"resourceType":"Bundle","type":"collection"}', None)


@web.middleware
async def _outcome_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 404/405 (a path or method this door does not serve) as OperationOutcomes too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not-supported" if exc.status in (404, 405) else "processing"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return outcome_response(exc.status, (Issue(code, exc.reason),), headers)


def capability_statement(settings: FhirRestSettings) -> dict[str, Any]:
    def interactions(rtype: str) -> list[dict[str, str]]:
        codes = ["create", "update"] + (["delete"] if rtype in intake.MAPPED_TYPES else [])
        return [{"code": c} for c in codes]

    security: dict[str, Any] = {
        "cors": False,
        "description": "Bearer token (static or JWT) or client certificate",
    }
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "date": "2026-11-24",
        "implementation": {"description": "affluent FHIR REST door", "url": settings.base_path},
        "rest": [
            {
                "mode": "server",
                "security": security,
                "resource": [
                    {"type": t, "interaction": interactions(t)} for t in sorted(intake.RESOURCE_TYPES)
                ],
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
            }
        ],
    }


def tls_context(settings: FhirRestSettings) -> ssl.SSLContext | None:
    """The shared door context (affluent/core/tls.py); a client certificate is optional here because
    bearer-token clients need none, and one that is presented is verified against the CA."""
    if settings.tls_certificate is None or settings.tls_key is None:
        return None
    from affluent.core.tls import server_context

    return server_context(
        settings.tls_certificate,
        settings.tls_key,
        key_setting="AFFLUENT_FHIR_REST__TLS_KEY",
        client_ca=settings.tls_client_ca,
    )
