"""How a process authenticates to NATS: the options for nats-py and FastStream, from its settings."""

from __future__ import annotations

from typing import Any

from nats.aio.client import RawCredentials
from pydantic import SecretStr

from caduceus_bus.nats_jwt import inbox_prefix_of
from caduceus_bus.settings import BusSettings


class CredentialsUnreadable(RuntimeError):
    """The configured `.creds` file cannot be read; the message names it."""


def take_credentials(settings: BusSettings) -> BusSettings:
    """Settings holding the credential in memory, its file removed: for a worker whose tools run after it starts.

    A sandboxed tool runs as the worker's own user, so a credential left on disk would be its to take.
    """
    path = settings.nats_credentials
    if path is None:
        return settings
    try:
        text = path.read_text()
        path.unlink()
    except OSError as exc:
        raise CredentialsUnreadable(f"cannot take the NATS credential {path} ({exc.strerror}): check "
                                    "CADUCEUS_NATS_CREDENTIALS") from None
    return settings.model_copy(update={"nats_credentials": None, "nats_credentials_text": SecretStr(text)})


def auth_options(settings: BusSettings) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` / `NatsBroker`: the credential and its inbox prefix, or user/password."""
    options: dict[str, Any] = {}
    if settings.nats_credentials_text is not None:
        text = settings.nats_credentials_text.get_secret_value()
        options["user_credentials"] = RawCredentials(text)
        if prefix := settings.nats_inbox_prefix or inbox_prefix_of(text):
            options["inbox_prefix"] = prefix
    elif settings.nats_credentials is not None:
        path = settings.nats_credentials
        try:
            text = path.read_text()
        except OSError as exc:
            raise CredentialsUnreadable(f"cannot read the NATS credential {path} ({exc.strerror}): check "
                                        "CADUCEUS_NATS_CREDENTIALS") from None
        options["user_credentials"] = str(path)
        prefix = settings.nats_inbox_prefix or inbox_prefix_of(text)
        if prefix:
            options["inbox_prefix"] = prefix
    elif settings.nats_user:
        options.update(user=settings.nats_user, password=settings.nats_password or "")
    if settings.nats_inbox_prefix and "inbox_prefix" not in options:
        options["inbox_prefix"] = settings.nats_inbox_prefix
    return options
