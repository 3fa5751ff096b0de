"""Policy packs: YAML (and raw Cedar) read, checked, compiled to Cedar, and tested."""

from caduceus_policy.pack.loader import PackError, load_pack, parse_pack, read_pack_files
from caduceus_policy.pack.model import Pack

__all__ = ["Pack", "PackError", "load_pack", "parse_pack", "read_pack_files"]
