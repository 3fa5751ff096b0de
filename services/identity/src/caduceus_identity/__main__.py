"""`python -m caduceus_identity`: verify chat messages and issue session grants until SIGINT/SIGTERM."""

from caduceus_bus import main_of
from caduceus_directory import DirectoryError
from caduceus_identity.adapters.dev_issuer import DevIssuerError
from caduceus_identity.app import bootstrap
from caduceus_identity.settings import IdentitySettings
from caduceus_schema import SchemaTooNew

main = main_of("identity", lambda: bootstrap(IdentitySettings()), (DirectoryError, DevIssuerError, SchemaTooNew))

if __name__ == "__main__":
    main()
