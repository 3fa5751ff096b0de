"""Sandbox policies for Caduceus workers: the model, the bubblewrap backend, channels, the egress proxy,
secrets, and renderers for Docker, Kubernetes and OpenShell.
"""

from caduceus_sandbox.bwrap import BwrapBackend, Findings, SandboxUnavailable
from caduceus_sandbox.channels import Channel, ChannelError, ChannelServers, egress_channel, relay_channel
from caduceus_sandbox.egress import EgressProxy, EgressRefused
from caduceus_sandbox.plan import SandboxPlan, python_runtime
from caduceus_sandbox.policy import PolicyError, PolicyFiles, SandboxPolicy, load_policy
from caduceus_sandbox.render import TARGETS, render

__all__ = [
    "TARGETS", "BwrapBackend", "Channel", "ChannelError", "ChannelServers", "EgressProxy", "EgressRefused", "Findings",
    "PolicyError", "PolicyFiles", "SandboxPlan", "SandboxPolicy", "SandboxUnavailable", "egress_channel",
    "load_policy", "python_runtime", "relay_channel", "render",
]
