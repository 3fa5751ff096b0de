"""Secrets and classified data in arguments, code that execute_code runs, MCP tools, memory and skill writes."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest

from caduceus_policy.facts import request_facts
from caduceus_policy.facts.code import code_operations
from caduceus_policy.facts.content import Classifier, classify, find_secrets

ROOT = PurePosixPath("/srv/caduceus/workspaces/acme/default")


@pytest.mark.parametrize(
    ("text", "kind"),
    [("key = AKIA" + "ABCDEFGHIJKLMNOP", "aws_access_key"),
     ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl", "private_key"),
     ("token ghp_" + "a" * 36, "github_token"),
     ("xoxb-" + "1234567890-abcdef", "slack_token"),
     ("OPENAI_API_KEY=sk-proj-" + "x" * 30, "openai_key"),
     ("password: hunter2hunter2", "password_assignment"),
     ("postgres://app:s3cretpass@db:5432/app", "url_credentials"),
     ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlX2hlcmU", "jwt"),
     ("export TOKEN=9fQ2xL7mZp4RtV8kWc3NbY6hJd1sGe5A", "high_entropy_token")],
)
def test_credentials_are_found_by_shape_or_entropy(text: str, kind: str) -> None:
    assert kind in find_secrets([text])


@pytest.mark.parametrize("text", ["sha256 " + "a3f1" * 16, "commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904",
                                  "the quick brown fox jumps over the lazy dog", "/usr/local/lib/python3.11/site"])
def test_ordinary_text_and_digests_are_not_secrets(text: str) -> None:
    assert find_secrets([text]) == []


def test_tenant_classifiers_name_the_data_classes_they_find() -> None:
    classifiers = [Classifier("pii", patterns=(re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),)),
                   Classifier("customer_data", words=("acme customer list",)),
                   Classifier("source_code", words=("proprietary",))]
    found = classify(["ssn 123-45-6789 here", "the ACME Customer List.csv"], classifiers)
    assert found == {"pii": "123-45-6789", "customer_data": "acme customer list"}


@pytest.mark.parametrize(
    ("code", "operations"),
    [("print(sum(range(10)))", set()),
     ("import subprocess\nsubprocess.run(['ls'])", {"process"}),
     ("import os\nos.system('id')", {"process"}),
     ("from os import system as s\ns('id')", {"process"}),
     ("import shutil\nshutil.rmtree('/')", {"file_delete", "file_write"}),
     ("open('/etc/passwd', 'w').write('x')", {"file_write"}),
     ("open('notes.txt').read()", set()),
     ("import socket\nsocket.create_connection(('10.0.0.1', 22))", {"network"}),
     ("exec(bytes.fromhex('7072696e74283129').decode())", {"dynamic_code"}),
     ("__import__('o' + 's').system('id')", {"dynamic_code", "unreadable", "process"}),
     ("import ctypes", {"native_code"}),
     ("def broken(:\n  pass", {"unreadable"})],
)
def test_python_code_is_parsed_for_risky_operations(code: str, operations: set[str]) -> None:
    assert code_operations(code)[0] == operations


def test_code_in_another_language_is_matched_by_its_calls() -> None:
    assert code_operations("require('child_process').exec('id')", "javascript")[0] >= {"process"}


def test_execute_code_facts_name_the_language_and_operations() -> None:
    facts = request_facts("acme", (), "execute_code", {"code": "import requests\nrequests.get('https://x.org')"},
                          ROOT).facts
    assert (facts["family"], facts["code_language"], facts["code_operations"]) == ("code", "python", {"network"})


def test_mcp_tools_are_split_into_server_and_tool_and_unknown_tools_count_as_destructive() -> None:
    facts = request_facts("acme", (), "mcp__github__create_issue", {"title": "x"}, ROOT).facts
    assert (facts["family"], facts["mcp_server"], facts["mcp_tool"]) == ("mcp", "github", "create_issue")
    assert (facts["mcp_read_only"], facts["mcp_destructive"]) == (False, True)


def test_memory_and_skill_writes_are_facts_and_their_secrets_are_found() -> None:
    memory = request_facts("acme", (), "memory", {"action": "add", "target": "memory",
                                                  "content": "aws key AKIA" + "ABCDEFGHIJKLMNOP"}, ROOT).facts
    assert memory["memory_write"] and memory["secrets_in_args"] and memory["secret_kinds"] == {"aws_access_key"}
    skill = request_facts("acme", (), "skill_manage", {"action": "create", "name": "x", "content": "y"}, ROOT).facts
    assert skill["skill_write"] is True and skill["risky"] is True
