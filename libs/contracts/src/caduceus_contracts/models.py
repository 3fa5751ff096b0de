"""Versioned event models: every message body on the bus is one of these, as JSON.

Each event names its `kind` (the discriminator) and `schema_version`; a
consumer parses with `parse_event`, which refuses unknown kinds, unknown
versions and malformed bodies with a `ContractError` naming what was wrong.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from caduceus_contracts import subjects
from caduceus_contracts.canonical import call_digest
from caduceus_contracts.signing import Keyring, Signer

SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 1_048_576


class ContractError(ValueError):
    """A message on the bus does not match any event contract."""


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Payload = TypeVar("Payload", bound=Model)


class Signed(Model, Generic[Payload]):
    """A payload with the signature of one issuer over its canonical JSON: a grant, a decision, a checkpoint.

    Each envelope keeps the field names it has always had on the wire (`grant`, `decision` or `checkpoint`,
    then `key_id`, `signature`), so stored and in-flight envelopes still parse and verify. `verify()`
    answers the payload itself, once the signature checks out.
    """

    # The envelope's payload field, and the issuers whose keys may sign it unless a verifier narrows them.
    payload_field: ClassVar[str]
    signed_by: ClassVar[frozenset[str]]

    @property
    def payload(self) -> Payload:
        return getattr(self, self.payload_field)

    @classmethod
    def issue(cls, signer: Signer, payload: Payload) -> Self:
        """The payload signed by `signer`."""
        return cls(**{cls.payload_field: payload, "key_id": signer.key_id,
                      "signature": signer.sign(payload.model_dump(mode="json"))})

    def verify(self, keyring: Keyring, *, issuers: Collection[str] | None = None,
               now: datetime | None = None) -> Payload:
        """The payload, if a key of one of `issuers` (default: the envelope's own) signed it and it is still
        valid at `now`. Raises SignatureError (or the envelope's own error for an expired payload)."""
        keyring.verify(self.payload.model_dump(mode="json"), key_id=self.key_id, signature=self.signature,
                       issuers=set(self.signed_by if issuers is None else issuers))
        self.check_current(now or utcnow())
        return self.payload

    def check_current(self, now: datetime) -> None:
        """Raise when the payload may no longer be used at `now`; most envelopes do not expire here."""


Tenant = Annotated[str, Field(pattern=subjects.TOKEN_RE.pattern)]
# A tenant, or the system chain: whose audit chain or error report this is (see subjects.CHAIN_RE).
ChainName = Annotated[str, Field(pattern=subjects.CHAIN_RE.pattern)]
Workspace = Annotated[str, Field(pattern=subjects.TOKEN_RE.pattern)]
SessionId = Annotated[str, Field(pattern=subjects.SESSION_RE.pattern)]


class Event(Model):
    """Fields every event carries."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    tenant: Tenant
    occurred_at: datetime = Field(default_factory=utcnow)


# --- identity --------------------------------------------------------------


# The approval modes of policy packs: ask for every call, ask when a call is risky, never ask.
ApprovalMode = Literal["always-ask", "ask-when-risky", "never"]
# Whose memory a turn reads and writes: the tenant's, one user's (`user:<name>`) or one channel's (`channel:<name>`).
MEMORY_SCOPE_PATTERN = r"^(tenant|user:.{1,256}|channel:.{1,256})$"


class SessionGrant(Model):
    """Who is asking, for one turn: issued and signed by identity, trusted by policy and approval.

    `roles` are the person's effective roles in the tenant (tiers included); `approval_mode` is the
    person's approval mode from tenants.yaml (None: the policy pack decides), an input to policy;
    `memory_scope` names the memory the planner gives this turn.
    """

    grant_id: str = Field(default_factory=new_id)
    tenant: Tenant
    workspace: Workspace
    user: str = Field(min_length=1, max_length=256)
    roles: tuple[str, ...]
    channel: str = Field(min_length=1, max_length=256)
    session_id: SessionId
    issued_at: datetime
    expires_at: datetime
    approval_mode: ApprovalMode | None = None
    memory_scope: str = Field(default="tenant", pattern=MEMORY_SCOPE_PATTERN)


class SignedGrant(Signed[SessionGrant]):
    """A session grant identity signed; `verify()` also refuses it once expired (GrantExpired)."""

    payload_field: ClassVar[str] = "grant"
    signed_by: ClassVar[frozenset[str]] = frozenset({"identity"})
    grant: SessionGrant
    key_id: str
    signature: str

    def check_current(self, now: datetime) -> None:
        if now >= self.grant.expires_at:
            raise GrantExpired(f"session grant {self.grant.grant_id} expired at {self.grant.expires_at.isoformat()}")

    def as_api_key(self) -> str:
        """The grant as the API key a planner sends the inference gateway (`cadgrant_` + base64url JSON)."""
        return API_KEY_PREFIX + base64.urlsafe_b64encode(self.model_dump_json().encode()).decode().rstrip("=")

    @classmethod
    def from_api_key(cls, key: str) -> SignedGrant:
        """The grant an API key carries (not yet verified); ContractError when it is not one."""
        if not key.startswith(API_KEY_PREFIX) or len(key) > 64 * 1024:
            raise ContractError("the API key is not a Caduceus session grant (it starts with cadgrant_)")
        raw = key[len(API_KEY_PREFIX):]
        try:
            return cls.model_validate_json(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        except (ValueError, ValidationError) as exc:
            raise ContractError(f"the API key is not a readable session grant: {type(exc).__name__}") from None


API_KEY_PREFIX = "cadgrant_"


class GrantExpired(Exception):
    """A session grant is past its expiry."""


# --- policy ----------------------------------------------------------------

Verdict = Literal["allow", "deny", "approve"]


class ApprovalTerms(Model):
    """Who must agree to an `approve` decision, how many of them, and for how long.

    Approvers are the users of the requester's tenant in any of `groups` or `roles`, plus
    `users` by name. After `escalate_after_s` without a decision, the members of
    `escalate_to` may answer too. `self_approval` lets requesters approve their own call.
    """

    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    quorum: int = Field(default=1, ge=1, le=50)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 86_400)
    escalate_to: tuple[str, ...] = ()
    escalate_after_s: float | None = Field(default=None, gt=0)
    remind_every_s: float | None = Field(default=None, gt=0)
    self_approval: bool = False


class RiskyFact(Model):
    """A fact about the call's arguments that made policy ask for a person; `argument` names the argument."""

    name: str
    value: str | bool | int | float
    argument: str | None = None


class Decision(Model):
    """A verdict on one exact call (by digest); signed, expiring and single-use."""

    decision_id: str = Field(default_factory=new_id)
    tenant: Tenant
    workspace: Workspace
    session_id: SessionId
    call_id: str
    tool: str
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    verdict: Verdict
    reason: str
    policy_ids: tuple[str, ...] = ()
    pack_version: str = ""
    approver_group: str | None = None
    quorum: int | None = None
    # Added for approvals (defaults keep older decisions valid): the terms of an `approve`,
    # the policy's explanation for people, and the risky facts behind it.
    approval: ApprovalTerms | None = None
    explanation: str = ""
    facts: tuple[RiskyFact, ...] = ()
    issued_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class SignedDecision(Signed[Decision]):
    """A decision policy (or approval) signed; its expiry is checked by whoever acts on it, against the call."""

    payload_field: ClassVar[str] = "decision"
    signed_by: ClassVar[frozenset[str]] = frozenset({"policy", "approval"})
    decision: Decision
    key_id: str
    signature: str


def decision_ttl(seconds: float = 60.0) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


# --- events on the path ----------------------------------------------------


class ChatMessageIn(Event):
    """A person's message. `token` is the person's OIDC token, or a chat integration's service-account API key.

    An integration (Slack, Discord) sends its API key and says who wrote the message on its platform:
    `platform`, `platform_user`, and `platform_email` when the platform verified that address.
    """

    kind: Literal["chat.message.in"] = "chat.message.in"
    message_id: str = Field(default_factory=new_id)
    session_id: SessionId
    workspace: Workspace = "default"
    channel: str = Field(default="cli", min_length=1, max_length=256)
    token: str = Field(max_length=16_384, repr=False)
    text: str = Field(max_length=100_000)
    platform: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    platform_user: str | None = Field(default=None, min_length=1, max_length=256)
    platform_email: str | None = Field(default=None, max_length=320)


class GrantRequested(Event):
    """A client other than chat (the MCP endpoint) asks identity to turn a person's OIDC access token into a
    session grant. Sent as a core NATS request on `caduceus.identity.grant.<tenant>` (never stored, since it
    carries the token); identity answers with a GrantAnswer. `purpose` chooses the audience the token must
    carry: a token for another audience is refused.
    """

    kind: Literal["identity.grant.requested"] = "identity.grant.requested"
    purpose: Literal["mcp"] = "mcp"
    workspace: Workspace = "default"
    channel: str = Field(default="mcp", min_length=1, max_length=256)
    session_id: SessionId
    token: str = Field(max_length=16_384, repr=False)


class GrantAnswer(Model):
    """Identity's answer to a GrantRequested: the signed grant, or why not (`refused`, `remedy`).

    `unavailable` is set when identity could not check the token at all (its provider did not answer): the
    client says "try again", not "your token is bad".
    """

    grant: SignedGrant | None = None
    refused: str = ""
    remedy: str = ""
    unavailable: bool = False


class TurnRequested(Event):
    """Identity verified the person and issued a grant: the broker may start the turn."""

    kind: Literal["turn.requested"] = "turn.requested"
    message_id: str
    grant: SignedGrant
    text: str


class TurnAssigned(Event):
    """The broker handed a turn to the planner of its tenant/workspace."""

    kind: Literal["turn.assigned"] = "turn.assigned"
    message_id: str
    grant: SignedGrant
    text: str
    worker_id: str


class ToolCallRequested(Event):
    """The planner asks for one tool call; nothing runs until it is decided."""

    kind: Literal["tool.requested"] = "tool.requested"
    call_id: str = Field(default_factory=new_id)
    grant: SignedGrant
    workspace: Workspace
    session_id: SessionId
    tool: str = Field(min_length=1, max_length=256)
    args: dict[str, Any]
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")

    def computed_digest(self) -> str:
        return call_digest(
            tenant=self.tenant, workspace=self.workspace, session=self.session_id, tool=self.tool, args=self.args
        )


class ToolCallDecided(Event):
    kind: Literal["tool.decided"] = "tool.decided"
    call_id: str
    workspace: Workspace
    decision: SignedDecision


class ToolCallDispatched(Event):
    """The broker sends a decided call to the executor of its tenant/workspace."""

    kind: Literal["tool.dispatched"] = "tool.dispatched"
    call_id: str
    workspace: Workspace
    session_id: SessionId
    tool: str
    args: dict[str, Any]
    decision: SignedDecision


ToolStatus = Literal["ok", "error", "denied", "refused"]


class ToolCallCompleted(Event):
    """The outcome the planner hands back to Hermes: a result, or why nothing ran."""

    kind: Literal["tool.completed"] = "tool.completed"
    call_id: str
    workspace: Workspace
    session_id: SessionId
    tool: str
    status: ToolStatus
    result: str = ""
    reason: str = ""
    executed_by: str | None = None

    @field_validator("result")
    @classmethod
    def _bounded(cls, value: str) -> str:
        return value if len(value) <= 200_000 else value[:200_000] + "\n[truncated]"

    @classmethod
    def of(cls, call: ToolCallRequested | ToolCallDispatched, status: ToolStatus, *, result: str = "",
           reason: str = "", executed_by: str | None = None) -> "ToolCallCompleted":
        """The outcome of a requested or dispatched call, naming the call as it did (tenant, workspace, session, tool)."""
        return cls(tenant=call.tenant, call_id=call.call_id, workspace=call.workspace, session_id=call.session_id,
                   tool=call.tool, status=status, result=result, reason=reason, executed_by=executed_by)


class ChatReply(Event):
    kind: Literal["chat.reply"] = "chat.reply"
    message_id: str
    session_id: SessionId
    status: Literal["ok", "refused", "error"] = "ok"
    text: str


class WorkerLifecycle(Event):
    """A worker process started, stopped, went idle and was stopped, crashed, or was refused
    (its sandbox policy, or the tenant's cap on workers: `capped`); `detail` says why.
    """

    kind: Literal["worker.lifecycle"] = "worker.lifecycle"
    workspace: Workspace
    worker_id: str
    role: Literal["planner", "executor"]
    state: Literal["started", "stopped", "crashed", "refused", "idle-stopped", "capped"]
    detail: str = ""


class ModelUsage(Event):
    """Tokens and cost of one model call in a turn: what policy counts against token and cost budgets."""

    kind: Literal["model.usage"] = "model.usage"
    workspace: Workspace
    session_id: SessionId
    user: str = Field(min_length=1, max_length=256)
    model: str = Field(default="", max_length=256)
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    # Added for the inference gateway (defaults keep older events valid): the call it measured and where it went.
    call_id: str = Field(default="", max_length=128)
    upstream: str = Field(default="", max_length=128)


# --- inference gateway -----------------------------------------------------


class DataClassSpec(Model):
    """A tenant's data class as the gateway applies it to text: regexes and words (`secret` is built in)."""

    name: str = Field(min_length=1, max_length=128)
    patterns: tuple[str, ...] = ()
    words: tuple[str, ...] = ()


class ModelCallRequested(Event):
    """The inference gateway asks policy whether one model call may go, and to which upstream.

    `grant` is the planner's session grant (its API key at the gateway); `prompt` is the prompt's
    text, which policy classifies (routing and data rules) and audit stores redacted.
    """

    kind: Literal["model.requested"] = "model.requested"
    call_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    grant: SignedGrant
    workspace: Workspace
    session_id: SessionId
    model: str = Field(default="", max_length=256)
    prompt: str = Field(default="", max_length=512 * 1024)
    prompt_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    estimated_tokens: int = Field(default=0, ge=0)
    stream: bool = False


class ModelDecision(Model):
    """Policy's verdict on one model call (by prompt digest): the upstream, and the data rules to apply."""

    decision_id: str = Field(default_factory=new_id)
    tenant: Tenant
    workspace: Workspace
    session_id: SessionId
    call_id: str
    prompt_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    verdict: Literal["allow", "deny"]
    reason: str
    policy_ids: tuple[str, ...] = ()
    pack_version: str = ""
    upstream: str = ""
    data_classes: tuple[str, ...] = ()
    redact_prompt: tuple[DataClassSpec, ...] = ()
    redact_response: tuple[DataClassSpec, ...] = ()
    deny_response: tuple[DataClassSpec, ...] = ()
    issued_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class SignedModelDecision(Signed[ModelDecision]):
    """A model decision policy signed; the gateway checks it is for its own call and unexpired."""

    payload_field: ClassVar[str] = "decision"
    signed_by: ClassVar[frozenset[str]] = frozenset({"policy"})
    decision: ModelDecision
    key_id: str
    signature: str


class ModelCallDecided(Event):
    kind: Literal["model.decided"] = "model.decided"
    call_id: str
    workspace: Workspace
    decision: SignedModelDecision


class ModelCallCompleted(Event):
    """What happened to a decided model call: answered, refused by a response rule, or the upstream failed."""

    kind: Literal["model.completed"] = "model.completed"
    call_id: str
    workspace: Workspace
    session_id: SessionId
    user: str = Field(min_length=1, max_length=256)
    upstream: str = Field(default="", max_length=128)
    status: Literal["ok", "refused", "upstream-failed"]
    detail: str = Field(default="", max_length=2000)


class PolicyShadowDisagreed(Event):
    """A candidate pack running in shadow decided a call differently from the live pack (which decided it)."""

    kind: Literal["policy.shadow.disagreed"] = "policy.shadow.disagreed"
    call_id: str
    workspace: Workspace
    tool: str
    live_version: str
    live_verdict: Verdict
    live_policy_ids: tuple[str, ...] = ()
    shadow_version: str
    shadow_verdict: Verdict
    shadow_policy_ids: tuple[str, ...] = ()
    shadow_reason: str = ""


class ErrorEvent(Event):
    """A message was refused: malformed, unknown, forged or out of place. Audited like any event."""

    kind: Literal["error"] = "error"
    # A refused message without a valid tenant is reported under the system tenant.
    tenant: ChainName
    service: str
    subject: str
    reason: str
    excerpt: str = ""


# --- identity administration -------------------------------------------------

IdentityAction = Literal["service-account.created", "service-account.revoked", "link.added", "link.removed",
                         "pairing.approved", "pairing.refused"]


class IdentityChanged(Event):
    """Who may speak for a tenant changed: a service account, a chat-platform link or a pairing (audited).

    `actor` is who made the change (an admin, the local operator, or identity itself for a link by verified
    email); `subject` what it concerns (an account's name, or `<platform>:<platform user>`). No key or code is
    ever part of it.
    """

    kind: Literal["identity.changed"] = "identity.changed"
    action: IdentityAction
    actor: str = Field(min_length=1, max_length=256)
    subject: str = Field(min_length=1, max_length=512)
    detail: str = Field(default="", max_length=1000)


# --- approvals -------------------------------------------------------------

ApprovalStatus = Literal["pending", "approved", "denied", "expired"]
Answer = Literal["approve", "deny"]


class ApprovalVote(Model):
    """One approver's counted answer."""

    approver: str
    answer: Answer
    comment: str = ""
    at: datetime


class ApprovalView(Model):
    """Everything an approver sees about one pending or decided approval (the inbox and detail page)."""

    workflow_id: str
    tenant: Tenant
    call_id: str
    workspace: Workspace
    session_id: SessionId
    tool: str
    args: dict[str, Any]
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    requester: str
    reason: str
    explanation: str = ""
    facts: tuple[RiskyFact, ...] = ()
    conversation: str = ""
    policy_ids: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    escalate_to: tuple[str, ...] = ()
    approvers: tuple[str, ...]
    quorum: int
    self_approval: bool = False
    votes: tuple[ApprovalVote, ...] = ()
    status: ApprovalStatus = "pending"
    resolution: str = ""
    escalated: bool = False
    opened_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None

    @property
    def asked_of(self) -> str:
        """Whom the request waits for, in words: its groups (and escalation), else its named approvers."""
        groups = self.groups + (self.escalate_to if self.escalated else ())
        return ", ".join(groups) or ", ".join(self.approvers) or "nobody"


class _ApprovalEvent(Event):
    call_id: str
    approval: ApprovalView


class ApprovalRequested(_ApprovalEvent):
    """A call waits for people: its approval workflow started."""

    kind: Literal["approval.requested"] = "approval.requested"


class ApprovalVoted(_ApprovalEvent):
    """An approver's answer counted, and the quorum is not reached yet."""

    kind: Literal["approval.voted"] = "approval.voted"


class ApprovalEscalated(_ApprovalEvent):
    """No decision in time: the escalation group may answer too."""

    kind: Literal["approval.escalated"] = "approval.escalated"


class ApprovalReminded(_ApprovalEvent):
    """The approval is still waiting: a reminder to the approvers who have not answered."""

    kind: Literal["approval.reminded"] = "approval.reminded"
    remind: tuple[str, ...] = ()


class ApprovalResolved(_ApprovalEvent):
    """The approval is over (approved, denied or expired); its signed decision is on tool.decided."""

    kind: Literal["approval.resolved"] = "approval.resolved"


class ApprovalAnswered(Event):
    """An approver answers from a chat integration (e.g. a Slack button), with their OIDC token."""

    kind: Literal["approval.answered"] = "approval.answered"
    call_id: str
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    answer: Answer
    comment: str = Field(default="", max_length=2000)
    channel: str = Field(default="chat", min_length=1, max_length=256)
    token: str = Field(max_length=16_384, repr=False)


class ApprovalRefused(Event):
    """An approve or deny that did not count, and why: audited like every event."""

    kind: Literal["approval.refused"] = "approval.refused"
    call_id: str
    approver: str
    answer: str
    channel: str
    reason: str


class ApprovalVouchRequested(Event):
    """A chat integration asks identity to vouch for a platform user's answer (e.g. a Slack button press).

    `token` is the integration's service-account key; identity resolves the platform user to a person by
    their link (never by pairing) and publishes ApprovalVouched, which the approval desk then counts or refuses.
    """

    kind: Literal["approval.vouch-requested"] = "approval.vouch-requested"
    call_id: str = Field(min_length=1, max_length=256)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    answer: Answer
    comment: str = Field(default="", max_length=2000)
    channel: str = Field(default="chat", min_length=1, max_length=256)
    token: str = Field(max_length=16_384, repr=False)
    platform: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    platform_user: str = Field(min_length=1, max_length=256)


class VouchExpired(ValueError):
    """A vouch is past its expiry: the answer it carries no longer counts."""


class Vouch(Model):
    """Identity's word that a linked platform user, who is `user` of `tenant`, gave this answer to this call."""

    vouch_id: str = Field(default_factory=new_id)
    tenant: Tenant
    user: str = Field(min_length=1, max_length=256)
    platform: str
    platform_user: str
    vouched_by: str = Field(description="the service account that spoke for the platform user")
    call_id: str
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    answer: Answer
    comment: str = ""
    channel: str
    issued_at: datetime
    expires_at: datetime


class SignedVouch(Signed[Vouch]):
    """A vouch identity signed; `verify()` also refuses it once expired (VouchExpired)."""

    payload_field: ClassVar[str] = "vouch"
    signed_by: ClassVar[frozenset[str]] = frozenset({"identity"})
    vouch: Vouch
    key_id: str
    signature: str

    def check_current(self, now: datetime) -> None:
        if now >= self.vouch.expires_at:
            raise VouchExpired(f"the vouch for call {self.vouch.call_id} expired at {self.vouch.expires_at}")


class ApprovalVouched(Event):
    """Identity vouches for a platform user's answer; the approval desk counts it like any approver's."""

    kind: Literal["approval.vouched"] = "approval.vouched"
    call_id: str
    vouch: SignedVouch

    @model_validator(mode="after")
    def _same_call(self) -> Self:
        if (self.vouch.vouch.tenant, self.vouch.vouch.call_id) != (self.tenant, self.call_id):
            raise ValueError("the vouch names another tenant or call than the event")
        return self


class ChatNotice(Event):
    """A message for the person in a conversation that is not the turn's reply (e.g. waiting for approval)."""

    kind: Literal["chat.notice"] = "chat.notice"
    session_id: SessionId
    call_id: str | None = None
    text: str


# --- audit -----------------------------------------------------------------

HASH_PATTERN = r"^[0-9a-f]{64}$"
FINGERPRINT_HEX = 8  # hex digits of each record's hash a checkpoint keeps


class ChainCheckpoint(Model):
    """The head of one audit chain (a tenant's, or the system chain) as the audit service stored it.

    Signed by audit, so a party outside the database can keep it and later prove that the stored
    history is still the one checkpointed: `hash` is record `seq`'s hash, and `fingerprints` holds the
    first 8 hex digits of the hash of every record after `prev_seq` up to `seq`, so a rewritten
    record is located even when the whole chain after it was recomputed.
    """

    tenant: ChainName
    seq: int = Field(ge=1)
    hash: str = Field(pattern=HASH_PATTERN)
    prev_seq: int = Field(ge=0)
    fingerprints: str = Field(pattern=rf"^(?:[0-9a-f]{{{FINGERPRINT_HEX}}})*$")
    issued_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _covers_its_range(self) -> "ChainCheckpoint":
        if self.prev_seq >= self.seq:
            raise ValueError(f"prev_seq {self.prev_seq} must be below seq {self.seq}")
        if len(self.fingerprints) != FINGERPRINT_HEX * (self.seq - self.prev_seq):
            raise ValueError(f"fingerprints must cover records {self.prev_seq + 1}..{self.seq}")
        return self

    def fingerprint(self, seq: int) -> str | None:
        """The fingerprint this checkpoint holds for record `seq`, or None outside its range."""
        if not self.prev_seq < seq <= self.seq:
            return None
        start = (seq - self.prev_seq - 1) * FINGERPRINT_HEX
        return self.fingerprints[start:start + FINGERPRINT_HEX]


class SignedCheckpoint(Signed[ChainCheckpoint]):
    """The head of a tenant's chain, signed by the audit service."""

    payload_field: ClassVar[str] = "checkpoint"
    signed_by: ClassVar[frozenset[str]] = frozenset({"audit"})
    checkpoint: ChainCheckpoint
    key_id: str
    signature: str


class AuditCheckpointed(Event):
    """Audit signed the head of a tenant's chain (published on `cad.v1.audit.checkpoint.<tenant>`)."""

    kind: Literal["audit.checkpoint"] = "audit.checkpoint"
    tenant: ChainName
    checkpoint: SignedCheckpoint

    @model_validator(mode="after")
    def _same_tenant(self) -> "AuditCheckpointed":
        if self.checkpoint.checkpoint.tenant != self.tenant:
            raise ValueError("the checkpoint names another tenant than the event")
        return self

    @classmethod
    def of(cls, signed: SignedCheckpoint) -> "AuditCheckpointed":
        """The event for a checkpoint, with an id derived from it so a re-publish is stored once."""
        checkpoint = signed.checkpoint
        return cls(tenant=checkpoint.tenant, event_id=f"audit-checkpoint-{checkpoint.tenant}-{checkpoint.seq}",
                   occurred_at=checkpoint.issued_at, checkpoint=signed)


# --- MCP gateway -----------------------------------------------------------

McpServerAction = Literal["added", "changed", "removed"]
McpPinAction = Literal["pinned", "revoked"]


class McpServerChanged(Event):
    """An MCP server was registered, changed or removed for a tenant (audited). Never carries a credential:
    `credentials` names the secret references only."""

    kind: Literal["mcp.server.changed"] = "mcp.server.changed"
    action: McpServerAction
    actor: str = Field(min_length=1, max_length=256)
    server: str = Field(min_length=1, max_length=64)
    scope: str = Field(default="tenant", max_length=1000)
    transport: Literal["stdio", "http"] = "stdio"
    target: str = Field(default="", max_length=2000)
    credentials: tuple[str, ...] = ()


class McpPinChanged(Event):
    """A tool definition was pinned (approved) or its pin revoked for a tenant or one of its workspaces."""

    kind: Literal["mcp.pin.changed"] = "mcp.pin.changed"
    action: McpPinAction
    actor: str = Field(min_length=1, max_length=256)
    server: str = Field(min_length=1, max_length=64)
    tool: str = Field(min_length=1, max_length=256)
    workspace: str = Field(default="", max_length=63)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")


class McpDefinitionChanged(Event):
    """An upstream serves another definition than the pinned one: the tool is withheld until approved again.
    `diff` shows what changed (a unified diff of the two definitions' canonical JSON)."""

    kind: Literal["mcp.definition.changed"] = "mcp.definition.changed"
    server: str = Field(min_length=1, max_length=64)
    tool: str = Field(min_length=1, max_length=256)
    workspace: str = Field(default="", max_length=63)
    pinned_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    served_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    diff: str = Field(default="", max_length=20000)


class McpToolView(Model):
    """One upstream tool as the planner sees it: its governed name, description and input schema."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    pinned: bool = False


class McpToolsQuery(Model):
    """A planner asks which MCP tools it may see (request on `caduceus.mcp.tools.<tenant>.<workspace>`)."""

    grant: SignedGrant


class McpToolsAnswer(Model):
    tools: tuple[McpToolView, ...] = ()
    problems: tuple[str, ...] = ()
    # Tools this person could use whose definition changed since it was approved: withheld (their new
    # definition is never shown), named so a planner can tell the agent why a call of one is denied.
    withheld: tuple[str, ...] = ()


class McpFactsQuery(Model):
    """Policy asks for the facts of one MCP tool (request on `caduceus.mcp.facts.<tenant>`)."""

    tenant: Tenant
    workspace: Workspace
    tool: str = Field(min_length=1, max_length=256)


class ToolsReachQuery(Model):
    """Which of these tools could the live policy ever allow for this grant's person (request on
    `caduceus.policy.reachable.<tenant>`)? The MCP gateway asks it so a planner lists no tool it can never use."""

    grant: SignedGrant
    tools: tuple[str, ...]


class ToolsReachAnswer(Model):
    tools: tuple[str, ...] = ()


UsageDimension = Literal["tenant", "person", "workspace", "model", "day"]


class UsageQuery(Model):
    """Model usage of one tenant, counted from the audit trail (request on `caduceus.audit.usage.<tenant>`).
    The approval service asks it for a tenant admin's usage page; only audit reads its store."""

    tenant: Tenant
    by: tuple[UsageDimension, ...] = Field(default=("person",), min_length=1, max_length=5)
    since: AwareDatetime
    days: bool = False  # also the totals of each day (for a chart), counted in the same pass


class UsageTotals(Model):
    """One group's totals, as `caduceus usage --json` prints a row: the group's key, then the numbers."""

    key: dict[str, str] = Field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    refusals: int = 0


class UsageAnswer(Model):
    rows: tuple[UsageTotals, ...] = ()
    days: tuple[UsageTotals, ...] = ()
    problem: str = ""


McpPinState = Literal["pinned", "unpinned", "changed", "unknown"]


class McpToolFacts(Model):
    """What the gateway knows of one tool: where it comes from, its annotations and whether its definition is pinned."""

    server: str = ""
    tool: str = ""
    pin: McpPinState = "unknown"
    annotations: dict[str, Any] = Field(default_factory=dict)
    approvers: str = ""
    digest: str = ""
    definition: dict[str, Any] = Field(default_factory=dict)


EVENT_MODELS: tuple[type[Event], ...] = (
    ChatMessageIn, TurnRequested, TurnAssigned, ToolCallRequested, ToolCallDecided, ToolCallDispatched,
    ToolCallCompleted, ChatReply, WorkerLifecycle, ErrorEvent, ModelUsage, PolicyShadowDisagreed,
    ApprovalRequested, ApprovalVoted, ApprovalEscalated, ApprovalReminded, ApprovalResolved, ApprovalAnswered,
    ApprovalRefused, ChatNotice, IdentityChanged,
    AuditCheckpointed, ApprovalVouchRequested, ApprovalVouched, GrantRequested,
    McpServerChanged, McpPinChanged, McpDefinitionChanged,
    ModelCallRequested, ModelCallDecided, ModelCallCompleted,
)
AnyEvent = Annotated[Union[EVENT_MODELS], Field(discriminator="kind")]  # noqa: UP007 - a union built from a tuple
_adapter: TypeAdapter[Any] = TypeAdapter(AnyEvent)
EVENT_KINDS = {m.model_fields["kind"].default: m for m in EVENT_MODELS}


def parse_event(data: bytes | str, *, expect: type[Event] | None = None, subject: str | None = None) -> Event:
    """Parse one message body into its event model, or raise ContractError saying why.

    With `expect`, any other kind is refused. With `subject`, the event's tenant
    must be the subject's tenant (a message cannot speak for another tenant).
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_EVENT_BYTES:
        raise ContractError(f"message of {len(data)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    try:
        event = _adapter.validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ContractError(f"malformed event at {where}: {first.get('msg')}") from None
    if expect is not None and not isinstance(event, expect):
        raise ContractError(f"expected {expect.model_fields['kind'].default} event, got {event.kind}")
    if subject is not None:
        subject_tenant = subjects.tenant_of(subject)
        if subject_tenant != event.tenant:
            raise ContractError(f"event for tenant {event.tenant!r} published on {subject!r}")
    return event
