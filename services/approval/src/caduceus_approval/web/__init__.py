"""The approver web UI and JSON API, served by the approval service."""
