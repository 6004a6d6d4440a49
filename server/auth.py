"""Who is calling, and what they may touch. The admin token may do everything; an agent's
token acts only as that agent. Tokens are kept as SHA-256 hashes and compared in constant time;
the ownership helpers at the bottom are what every handler uses to apply those rules."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, replace

from .audit import AuditLog
from .errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from .storage import agents as agent_rows
from .store import Store

BEARER = "bearer"
# Agent ids never contain ':', so a token names its agent before the first one; the lookup is by id
# and the secret comparison is constant-time.
TOKEN_SEPARATOR = ":"


@dataclass(frozen=True)
class Caller:
    """The authenticated principal: the admin (agent_id None) or one agent."""

    agent_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.agent_id is None

    def may_see(self, owner_agent_id: str | None) -> bool:
        """Whether a resource owned by `owner_agent_id` (None: owned by nobody) is visible."""
        return self.is_admin or owner_agent_id is None or owner_agent_id == self.agent_id

    def __str__(self) -> str:
        return "admin" if self.is_admin else f"agent {self.agent_id}"


ADMIN = Caller(agent_id=None)


@dataclass(frozen=True)
class AgentRecord:
    agent_id: str
    created_at: float
    revoked_at: float | None = None
    model_author: bool = False  # may define shared models

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> dict:
        return {
            "agentId": self.agent_id,
            "active": self.active,
            "createdAt": round(self.created_at * 1000),
            "revokedAt": None if self.revoked_at is None else round(self.revoked_at * 1000),
            "modelAuthor": self.model_author,
        }


@dataclass(frozen=True)
class IssuedToken:
    """A new agent and its token; the token is shown once and never stored in clear."""

    agent: AgentRecord
    token: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class AgentRegistry:
    """Registered agents and token checks. Checks use an in-memory copy of the table, so the
    event loop never waits on SQLite to authenticate; writes go through a worker thread."""

    def __init__(self, store: Store, audit: AuditLog, admin_token: str | None) -> None:
        self._store = store
        self._audit = audit
        # Without an admin token nobody can act as admin (a digest nothing hashes to).
        self._admin_digest = _digest(admin_token) if admin_token else secrets.token_bytes(32)
        self._agents: dict[str, tuple[AgentRecord, bytes]] = {}
        self._dummy_digest = secrets.token_bytes(32)
        for row in agent_rows.all_rows(store):
            record = AgentRecord(
                row["agent_id"], row["created_at"], row["revoked_at"], bool(row["model_author"])
            )
            self._agents[record.agent_id] = (record, bytes.fromhex(row["token_sha256"]))

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller for an `Authorization` header value; Unauthorized when missing or wrong."""
        if not authorization:
            raise Unauthorized("missing Authorization header; expected 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != BEARER or not token:
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        presented = _digest(token)
        if hmac.compare_digest(presented, self._admin_digest):
            return ADMIN
        agent_id = token.partition(TOKEN_SEPARATOR)[0]
        record, expected = self._agents.get(agent_id, (None, self._dummy_digest))
        # Compare even for unknown agents so the time taken does not tell which ids exist.
        matches = hmac.compare_digest(presented, expected)
        if record is None or not matches or not record.active:
            raise Unauthorized("invalid or revoked token")
        return Caller(agent_id=agent_id)

    def get(self, agent_id: str) -> AgentRecord | None:
        entry = self._agents.get(agent_id)
        return entry[0] if entry else None

    def is_active(self, agent_id: str) -> bool:
        record = self.get(agent_id)
        return record is not None and record.active

    def list(self) -> list[AgentRecord]:
        return sorted((record for record, _ in self._agents.values()), key=lambda r: r.agent_id)

    def is_model_author(self, agent_id: str) -> bool:
        record = self.get(agent_id)
        return record is not None and record.active and record.model_author

    async def register(self, agent_id: str, model_author: bool = False) -> IssuedToken:
        """A new agent with a fresh token. Ids are never reused, revoked ones included."""
        if agent_id in self._agents:
            raise Conflict(f"agent {agent_id} already exists; agent ids are never reused")
        token = f"{agent_id}{TOKEN_SEPARATOR}{secrets.token_urlsafe(32)}"
        digest = _digest(token)
        record = await asyncio.to_thread(self._insert, agent_id, digest, model_author)
        self._agents[agent_id] = (record, digest)
        return IssuedToken(agent=record, token=token)

    async def set_model_author(self, agent_id: str, model_author: bool) -> AgentRecord:
        """Let an agent define shared models, or stop it from doing so."""
        entry = self._agents.get(agent_id)
        if entry is None:
            raise NotFound(f"agent {agent_id} not found")

        def write() -> None:
            with self._store.transaction() as conn:
                agent_rows.set_model_author(conn, agent_id, model_author)
                body = {"agentId": agent_id, "modelAuthor": model_author}
                self._audit.record(conn, "agent.updated", None, body, agent_id=agent_id)

        await asyncio.to_thread(write)
        record = replace(entry[0], model_author=model_author)
        self._agents[agent_id] = (record, entry[1])
        return record

    def _insert(self, agent_id: str, digest: bytes, model_author: bool = False) -> AgentRecord:
        now = time.time()
        with self._store.transaction() as conn:
            if agent_rows.exists(conn, agent_id):
                raise Conflict(f"agent {agent_id} already exists; agent ids are never reused")
            agent_rows.insert(conn, agent_id, digest.hex(), now, model_author)
            body = {"agentId": agent_id, "modelAuthor": model_author}
            self._audit.record(conn, "agent.registered", None, body, agent_id=agent_id)
        return AgentRecord(agent_id=agent_id, created_at=now, model_author=model_author)

    async def revoke(self, agent_id: str) -> AgentRecord:
        """Revokes the agent's token at once; revoking a revoked agent changes nothing."""
        entry = self._agents.get(agent_id)
        if entry is None:
            raise NotFound(f"agent {agent_id} not found")
        record, digest = entry
        if not record.active:
            return record
        # Refuse the token before the write finishes, so no request slips in meanwhile.
        now = time.time()
        self._agents[agent_id] = (replace(record, revoked_at=now), digest)
        try:
            await asyncio.to_thread(self._mark_revoked, agent_id, now)
        except BaseException:
            self._agents[agent_id] = entry
            raise
        return self._agents[agent_id][0]

    def _mark_revoked(self, agent_id: str, now: float) -> None:
        with self._store.transaction() as conn:
            agent_rows.mark_revoked(conn, agent_id, now)
            self._audit.record(conn, "agent.revoked", None, {"agentId": agent_id}, agent_id=agent_id)


# ---- ownership rules, for handlers ----


def require_admin(caller: Caller, action: str) -> None:
    if not caller.is_admin:
        raise Forbidden(f"{action} needs the admin token; {caller} may not")


def act_as(caller: Caller, agent_id: str | None, field: str = "agentId") -> str:
    """The agent a request acts for. An agent acts only as itself (another id: Forbidden);
    the admin acts for whichever agent the request names, and must name one."""
    if caller.is_admin:
        if agent_id is None:
            raise BadRequest(f"{field} is required when acting with the admin token")
        return agent_id
    if agent_id is not None and agent_id != caller.agent_id:
        raise Forbidden(f"{field} {agent_id!r} is not the agent this token belongs to ({caller.agent_id!r})")
    return caller.agent_id


def agent_filter(caller: Caller, requested: str | None, field: str = "agentId") -> str | None:
    """The agent a list or query is limited to: the admin's choice (None: all); for an agent,
    always itself (asking for another agent's records is Forbidden)."""
    if caller.is_admin:
        return requested
    if requested is not None and requested != caller.agent_id:
        raise Forbidden(f"{field} {requested!r} is not the agent this token belongs to ({caller.agent_id!r})")
    return caller.agent_id


def ensure_visible(caller: Caller, owner_agent_id: str | None, what: str, ident: str) -> None:
    """Another agent's resource answers exactly like a missing one, so existence does not leak."""
    if not caller.may_see(owner_agent_id):
        raise NotFound(f"{what} {ident} not found")
