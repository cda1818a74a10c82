"""The sources file: which FHIR servers to pull, how to authenticate, and in which mode.

Validated once when loaded, so that a typo in a source's auth block is a start-up error naming the
source, not a 401 at 3 a.m. Secrets are never in the file itself: a static token or a private key is
named by an environment variable or a file path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from affluent.core.errors import ConfigError
from affluent.core.origins import origin_of, transport_allowed

DEFAULT_TYPES = ["Patient", "Encounter", "Observation", "Condition", "Procedure", "DiagnosticReport"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoAuth(_Strict):
    kind: Literal["none"] = "none"


class StaticTokenAuth(_Strict):
    """A bearer token issued out of band; ``token_env`` names the variable that holds it."""

    kind: Literal["static"]
    token_env: str

    def token(self) -> str:
        value = os.environ.get(self.token_env, "")
        if not value:
            raise ConfigError(f"environment variable {self.token_env} (static FHIR token) is empty or unset")
        return value


class SmartAuth(_Strict):
    """SMART Backend Services: client_credentials with a signed client assertion (private_key_jwt)."""

    kind: Literal["smart"]
    client_id: str
    private_key_file: Path
    algorithm: Literal["RS384", "ES384"] = "RS384"
    key_id: str | None = None
    # None: discovered from ``<base_url>/.well-known/smart-configuration``.
    token_url: str | None = None
    scope: str = "system/*.read"
    # Refresh this many seconds before the token expires, so that no request carries a dying token.
    refresh_margin_s: float = Field(default=60.0, ge=0)


Auth = Annotated[NoAuth | StaticTokenAuth | SmartAuth, Field(discriminator="kind")]


class SourceConfig(_Strict):
    """One warehouse FHIR server; ``facility``/``application`` become the raw records' source."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base_url: str
    facility: str
    application: str = "EDS-FHIR"
    resource_types: list[str] = Field(default_factory=lambda: list(DEFAULT_TYPES), min_length=1)
    mode: Literal["search", "bulk"] = "search"
    page_size: int = Field(default=100, ge=1, le=10_000)
    auth: Auth = NoAuth()
    # Seconds between passes in ``--follow`` mode (None: the FhirPollSettings default).
    interval_s: float | None = Field(default=None, gt=0)
    # First pass with no checkpoint: pull from this instant (FHIR instant), or everything when unset.
    since: str | None = None
    # Extra search parameters added to every search (e.g. ``{"_elements": "..."}``), never _lastUpdated.
    extra_params: dict[str, str] = Field(default_factory=dict)
    # A plain http:// base_url beyond loopback (the token and the data in clear): refused unless true.
    allow_plaintext: bool = False

    @model_validator(mode="after")
    def _clean(self) -> SourceConfig:
        if not self.base_url.startswith(("http://", "https://")) or origin_of(self.base_url) is None:
            raise ValueError("base_url must be an http(s) URL, without user info")
        reserved = {"_lastUpdated", "_sort", "_count"} & set(self.extra_params)
        if reserved:
            raise ValueError(f"extra_params may not set {sorted(reserved)}: the puller owns them")
        return self

    @property
    def base(self) -> str:
        return self.base_url.rstrip("/")


def check_transport(source: SourceConfig, allow_plaintext: bool = False) -> None:
    """Refuse, before any request, a source that would get the token and send patients in clear."""
    if not transport_allowed(source.base, allow_plaintext or source.allow_plaintext):
        raise ConfigError(
            f"source {source.name}: base_url is plain http beyond loopback; use https, or accept the risk "
            "with allow_plaintext: true on the source (or AFFLUENT_FHIR_POLL__ALLOW_PLAINTEXT=true)"
        )


class SourcesFile(_Strict):
    sources: list[SourceConfig]


def parse_sources(text: str, where: str = "sources file") -> dict[str, SourceConfig]:
    """Parse the YAML text of a sources file; every problem becomes one ConfigError naming its place."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {type(exc).__name__}") from None
    try:
        parsed = SourcesFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid {where}: {problems}") from None
    sources: dict[str, SourceConfig] = {}
    for source in parsed.sources:
        if source.name in sources:
            raise ConfigError(f"invalid {where}: two sources are called {source.name}")
        sources[source.name] = source
    return sources


def load_sources(path: Path) -> dict[str, SourceConfig]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the FHIR sources file {path}: {exc.strerror}") from None
    return parse_sources(text, str(path))
