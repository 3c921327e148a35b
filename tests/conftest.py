"""Fixtures every test folder shares (pytest finds them here; tests never import them)."""

pytest_plugins = ["tests.support.harness", "tests.support.openai_server", "tests.support.tiny_vlm"]
