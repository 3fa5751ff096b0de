"""Who sent a chat message: a person with an OIDC token, or a platform user a chat integration vouches for.

An integration authenticates with its service account's API key and names the platform user.
A linked platform user is that person; an unlinked one is linked by an address the platform
verified, or gets a pairing code for a tenant admin to approve. A refusal's reason (audited)
never carries the code; only the reply to the platform user does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from caduceus_contracts import ApprovalVouchRequested, ChatMessageIn
from caduceus_directory import Directory, Member
from caduceus_identity.adapters.store import IdentityStore
from caduceus_identity.linking import (
    PairingRefused,
    PairingRules,
    PlatformLink,
    ServiceAccount,
    looks_like_api_key,
    shown_code,
)
from caduceus_oidc import Refused, TokenRefused, VerifiedIdentity

KEY_REMEDY = ("ask an administrator of the tenant for a service-account key "
              "(`caduceus identity service-account create`) and configure the integration with it")


class TokenVerifier(Protocol):
    async def verify(self, token: str, tenant: str | None = None, *,
                     audience: str | None = None) -> VerifiedIdentity: ...


class Gatekeeper:
    """Turns a message's credential into a verified identity, or raises Refused saying why and what to do."""

    def __init__(self, tokens: TokenVerifier, store: IdentityStore, directory: Callable[[], Directory],
                 clock: Callable[[], datetime], rules: PairingRules = PairingRules()) -> None:
        self.tokens = tokens
        self.store = store
        self.directory = directory
        self.clock = clock
        self.rules = rules

    async def identify(self, message: ChatMessageIn) -> VerifiedIdentity:
        if looks_like_api_key(message.token):
            return self._platform_user(self._account(message), message)
        return await self.tokens.verify(message.token, message.tenant)

    def vouch(self, request: ApprovalVouchRequested) -> tuple[ServiceAccount, str]:
        """The integration's account and the person its platform user is linked to, or Refused.

        Only an existing link counts: an answer to an approval never pairs or links anyone.
        """
        account = self._account(request)
        link = self.store.link(request.tenant, request.platform, request.platform_user)
        if link is None:
            raise Refused(f"{request.platform} user {request.platform_user!r} is not linked to a person in tenant "
                          f"{request.tenant!r}, so their answer does not count",
                          "pair the account first: send the bot a message and have an administrator approve the code")
        return account, link.user

    def _account(self, message: ChatMessageIn | ApprovalVouchRequested) -> ServiceAccount:
        account = self.store.authenticate(message.token)
        if account is None:
            raise TokenRefused("the service-account key is unknown or revoked", KEY_REMEDY)
        if account.tenant != message.tenant:
            raise Refused(f"service account {account.name!r} belongs to tenant {account.tenant!r}, not "
                          f"{message.tenant!r}", f"send it to tenant {account.tenant!r}")
        if not message.platform or not message.platform_user:
            raise Refused(f"service account {account.name!r} did not say which platform user wrote the message",
                          "the integration must set `platform` and `platform_user` on every message")
        if message.platform not in account.platforms:
            raise Refused(f"service account {account.name!r} may not speak for {message.platform} users "
                          f"(only {', '.join(account.platforms) or 'none'})",
                          "ask an administrator to create a service account for that platform")
        return account

    def _platform_user(self, account: ServiceAccount, message: ChatMessageIn) -> VerifiedIdentity:
        assert message.platform and message.platform_user
        tenant, platform, who, now = message.tenant, message.platform, message.platform_user, self.clock()
        link = self.store.link(tenant, platform, who)
        if link is None and message.platform_email:
            user = self.directory().tenant(tenant).user_by_email(message.platform_email)
            if user is not None:
                link = self.store.add_link(tenant, platform, who, user, f"email verified by {platform}", now)
        if link is None:
            raise self._pairing(tenant, platform, who, now)
        return VerifiedIdentity(subject=link.user, tenant=tenant, groups=(), email=None,
                                issuer=f"service account {account.name} ({platform})", expires_at=None)

    def _pairing(self, tenant: str, platform: str, who: str, now: datetime) -> Refused:
        reason = f"{platform} user {who!r} is not linked to a person in tenant {tenant!r}"
        request = self.store.request_pairing(tenant, platform, who, now, self.rules)
        approve = f"`caduceus identity pairing approve --tenant {tenant} --platform {platform} --code <code> " \
                  "--user <your user name>`"
        if request.status == "issued":
            assert request.code and request.expires_at
            return Refused(reason, f"ask an administrator of {tenant!r} to approve pairing code "
                                   f"{shown_code(request.code)} before {_clock(request.expires_at)} with {approve}")
        if request.status == "pending":
            assert request.expires_at
            return Refused(reason, f"a pairing code was already sent to you; ask an administrator of {tenant!r} to "
                                   f"approve it before {_clock(request.expires_at)}, or ask again after that")
        if request.status == "locked":
            return Refused(reason, f"pairing for {platform} is locked after too many wrong codes; try again later")
        return Refused(reason, f"too many pairing requests are waiting in {tenant!r}; try again later")


def _clock(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def approve_pairing(store: IdentityStore, directory: Directory, approver: Member, platform: str, code: str,
                    user: str, now: datetime, rules: PairingRules = PairingRules()) -> PlatformLink:
    """A tenant admin links the platform user who got `code` to `user`; PairingRefused or Refused otherwise."""
    if not approver.is_admin:
        refused = PairingRefused(f"{approver.name!r} is not an owner or admin of tenant {approver.tenant!r} "
                                 f"(roles: {', '.join(approver.roles) or 'none'}); only they may approve pairing codes")
        store.record_refusal(approver.tenant, "pairing.refused", approver.name, f"{platform}:?", now, str(refused))
        raise refused
    directory.user(approver.tenant, user)
    return store.approve_pairing(approver.tenant, platform, code, user, approver.name, now, rules)
