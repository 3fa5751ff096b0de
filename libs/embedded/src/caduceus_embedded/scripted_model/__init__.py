"""An OpenAI-compatible chat model that plays tool calls from scenario files: the offline demo and the tests.

Run it with `python -m caduceus_embedded.scripted_model --port 8765 [--scenarios FILE] [--host 127.0.0.1]`.
"""

from caduceus_embedded.scripted_model.scenarios import (
    Reply,
    Scenario,
    ScenarioError,
    choose_reply,
    default_scenarios_path,
    load_scenarios,
)
from caduceus_embedded.scripted_model.server import MODEL_ID, create_app

__all__ = ["MODEL_ID", "Reply", "Scenario", "ScenarioError", "choose_reply", "create_app", "default_scenarios_path",
           "load_scenarios"]
