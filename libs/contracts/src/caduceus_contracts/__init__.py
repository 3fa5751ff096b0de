"""Event contracts: versioned models, subjects, canonical JSON, call digests, signatures.

Every service imports the bus contract from here; nothing else defines it.
"""

from caduceus_contracts import subjects
from caduceus_contracts.canonical import (
    CanonicalizationError,
    call_digest,
    canonical_json,
)
from caduceus_contracts.models import (
    EVENT_KINDS,
    ApprovalAnswered,
    ApprovalEscalated,
    ApprovalRefused,
    ApprovalReminded,
    ApprovalRequested,
    ApprovalResolved,
    ApprovalTerms,
    ApprovalView,
    ApprovalVote,
    ApprovalVoted,
    AuditCheckpointed,
    ChainCheckpoint,
    ChatMessageIn,
    ChatNotice,
    ChatReply,
    ContractError,
    Decision,
    ErrorEvent,
    Event,
    GrantAnswer,
    GrantExpired,
    GrantRequested,
    IdentityChanged,
    ModelUsage,
    PolicyShadowDisagreed,
    RiskyFact,
    SessionGrant,
    Signed,
    SignedCheckpoint,
    SignedDecision,
    SignedGrant,
    ToolCallCompleted,
    ToolCallDecided,
    ToolCallDispatched,
    ToolCallRequested,
    TurnAssigned,
    TurnRequested,
    WorkerLifecycle,
    decision_ttl,
    new_id,
    parse_event,
    utcnow,
)
from caduceus_contracts.signing import (
    Keyring,
    ReloadingKeyring,
    SignatureError,
    Signer,
    ensure_signer,
    load_keyring,
)

__all__ = [
    "EVENT_KINDS", "ApprovalAnswered", "ApprovalEscalated", "ApprovalRefused", "ApprovalReminded",
    "ApprovalRequested", "ApprovalResolved", "ApprovalTerms", "ApprovalView", "ApprovalVote", "ApprovalVoted",
    "ChatNotice", "RiskyFact", "CanonicalizationError", "ChatMessageIn", "ChatReply", "ContractError", "Decision",
    "ErrorEvent", "Event", "GrantExpired", "IdentityChanged", "Keyring", "ModelUsage", "PolicyShadowDisagreed", "SessionGrant",
    "ReloadingKeyring",
    "SignatureError", "Signed", "SignedDecision",
    "SignedGrant", "Signer", "ToolCallCompleted", "ToolCallDecided", "ToolCallDispatched", "ToolCallRequested",
    "TurnAssigned", "TurnRequested", "WorkerLifecycle", "call_digest", "canonical_json", "decision_ttl",
    "ensure_signer", "load_keyring", "new_id", "parse_event", "subjects", "utcnow",
    "AuditCheckpointed", "ChainCheckpoint", "SignedCheckpoint",
    "GrantAnswer", "GrantRequested",
]
