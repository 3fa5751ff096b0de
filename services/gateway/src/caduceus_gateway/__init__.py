"""The chat gateway: the web chat, chat platforms (Slack), and the relay they share to reach the agent.

Each integration publishes a person's message as `chat.in` with a credential identity checks (the person's
OIDC token, or the integration's service-account key naming the platform user) and relays what comes back;
it never decides anything itself.
"""

from caduceus_gateway.app import GatewayService, build
from caduceus_gateway.handlers import ROUTES
from caduceus_gateway.integrations import Integration
from caduceus_gateway.relay import Relay, Speaker, TurnTimedOut, TurnUpdate
from caduceus_gateway.settings import GatewaySettings
from caduceus_gateway.slack import SlackConfigError, load_slack_config

__all__ = ["ROUTES", "GatewayService", "GatewaySettings", "Integration", "Relay", "Speaker", "TurnTimedOut", "TurnUpdate",
           "build"]
__all__ += ["SlackConfigError", "load_slack_config"]
