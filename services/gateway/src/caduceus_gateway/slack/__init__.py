"""Slack for the chat gateway: Socket Mode and the Events API, several workspaces each mapped to a tenant,
turns through identity's pairing, and approvals answered with Block Kit buttons."""

from caduceus_gateway.slack.config import (
    SLACK_FORMAT,
    SlackConfig,
    SlackConfigError,
    SlackWorkspace,
    load_slack_config,
    parse_slack_config,
)
from caduceus_gateway.slack.gateway import EVENTS_PATH, SlackGateway
from caduceus_gateway.slack.installation import SLACK_API_URL

__all__ = ["EVENTS_PATH", "SLACK_API_URL", "SLACK_FORMAT", "SlackConfig", "SlackConfigError", "SlackGateway",
           "SlackWorkspace", "load_slack_config", "parse_slack_config"]
