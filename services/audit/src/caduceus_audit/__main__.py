"""`python -m caduceus_audit`: store every bus event in the audit trail until SIGINT or SIGTERM."""

from sqlalchemy.exc import ArgumentError

from caduceus_audit.app import build
from caduceus_audit.settings import AuditSettings
from caduceus_bus import main_of
from caduceus_contracts import SignatureError
from caduceus_schema import SchemaTooNew

main = main_of("audit", lambda: build(AuditSettings()), (ArgumentError, SignatureError, SchemaTooNew))

if __name__ == "__main__":
    main()
