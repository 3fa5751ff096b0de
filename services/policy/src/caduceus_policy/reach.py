"""Which tools a pack could ever allow for a person, whatever the arguments: so a planner is not offered a tool
(an MCP tool, say) that every call of would be denied.

Conservative in the person's favour only where the pack cannot be read statically (hand-written Cedar): such a
tool is listed, and every call is still decided on its own.
"""

from __future__ import annotations

from caduceus_policy.pack.model import Rule, TenantPolicy, tool_matches


def _applies(rule: Rule, tool: str, user: str, roles: tuple[str, ...]) -> bool:
    return (tool_matches(rule.tools, tool) and (rule.roles is None or bool(set(rule.roles) & set(roles)))
            and (rule.users is None or user in rule.users))


def could_allow(policy: TenantPolicy | None, tool: str, *, user: str, roles: tuple[str, ...]) -> bool:
    """False when no allow rule can match this person and tool, or an unconditional deny always does."""
    if policy is None:
        return False
    if policy.cedar:
        return True
    if any(r.effect == "deny" and not r.when and not r.unless and _applies(r, tool, user, roles)
           for r in policy.rules):
        return False
    return any(r.effect == "allow" and _applies(r, tool, user, roles) for r in policy.rules)
