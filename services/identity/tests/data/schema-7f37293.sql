CREATE TABLE IF NOT EXISTS service_accounts (
    account_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, platforms TEXT NOT NULL,
    key_hash TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS service_account_names ON service_accounts (tenant, name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS platform_links (
    tenant TEXT NOT NULL, platform TEXT NOT NULL, platform_user TEXT NOT NULL, user TEXT NOT NULL,
    linked_by TEXT NOT NULL, linked_at TEXT NOT NULL, PRIMARY KEY (tenant, platform, platform_user));
CREATE TABLE IF NOT EXISTS pairing_codes (
    tenant TEXT NOT NULL, platform TEXT NOT NULL, platform_user TEXT NOT NULL, code_hash TEXT NOT NULL,
    salt BLOB NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL,
    PRIMARY KEY (tenant, platform, platform_user));
CREATE TABLE IF NOT EXISTS pairing_failures (
    tenant TEXT NOT NULL, platform TEXT NOT NULL, failed_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identity_changes (
    event_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, action TEXT NOT NULL, actor TEXT NOT NULL,
    subject TEXT NOT NULL, detail TEXT NOT NULL, occurred_at TEXT NOT NULL, published INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS identity_changes_unpublished ON identity_changes (published, occurred_at);
