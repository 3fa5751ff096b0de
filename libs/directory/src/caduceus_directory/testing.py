"""A tenants file for tests: acme (users, groups mapped to roles) and globex (a custom role, per-channel memory,
an approval mode per tenant and per user)."""

TENANTS = """\
tenants:
  acme:
    display_name: Acme Corp
    workspaces: [default]
    users:
      alice: {email: alice@acme.example, roles: [member]}
      bob: {email: bob@acme.example, roles: [member]}
      carol: {email: carol@acme.example, roles: [admin]}
    groups:
      acme-admins: [admin]
      acme-staff: [member]
  globex:
    display_name: Globex
    workspaces: [default, research]
    memory: channel
    approval_mode: always-ask
    roles:
      researcher: {description: runs experiments, includes: [member]}
    users:
      dave: {email: dave@globex.example, roles: [researcher], approval_mode: ask-when-risky}
      erin: {email: erin@globex.example, roles: [guest]}
"""
