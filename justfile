# Caduceus developer commands. Each recipe is `python3 dev.py <recipe>`, which needs nothing but Python.
set positional-arguments

# list the recipes
default:
    @just --list

# the embedded stack and one governed chat turn
demo *args:
    python3 dev.py demo "$@"

# keep the embedded stack running
up *args:
    python3 dev.py up "$@"

# the whole test suite (pytest arguments pass through: just test -k digest)
test *args:
    python3 dev.py test "$@"

# every bench/*.py
bench *args:
    python3 dev.py bench "$@"

# ruff over the repository
lint *args:
    python3 dev.py lint "$@"
