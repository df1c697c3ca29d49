"""Issue 17 item 6: a plugin's `secret_outputs` given as a string ("url") was iterated letter by
letter and redacted nothing. Now the step fails naming the field, and outputs sealed before the
check are all treated as secret (fail closed)."""
import pytest

from agent.errors import PluginError
from agent.pipeline import RunMemory
from agent.plugins import check_secret_outputs

PASSWORD = "s3cr3t-pw-123"
URL = f"postgres://app:{PASSWORD}@db/app"


@pytest.mark.parametrize("secret_outputs", ["url", {"url": True}, [1], "url,password"])
def test_secret_outputs_not_a_list_of_keys_fails_the_step_naming_the_field(secret_outputs):
    with pytest.raises(PluginError) as caught:
        check_secret_outputs({"url": URL, "secret_outputs": secret_outputs}, "step mkdb")
    assert caught.value.code == "plugin_bad_output"
    assert "secret_outputs" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_secret_outputs_naming_a_missing_key_fails_the_step():
    with pytest.raises(PluginError, match="secret_outputs"):
        check_secret_outputs({"url": URL, "secret_outputs": ["uri"]}, "step mkdb")


def test_a_list_of_keys_is_accepted_and_redacted():
    output = {"url": URL, "rows": 3, "secret_outputs": ["url"]}
    check_secret_outputs(output, "step mkdb")
    memory = RunMemory()
    memory.add_outputs("mkdb", output)
    assert PASSWORD not in memory.redact(f"connecting to {URL}")


def test_outputs_with_a_string_secret_outputs_are_all_redacted():
    memory = RunMemory()
    memory.add_outputs("mkdb", {"url": URL, "secret_outputs": "url"})
    assert URL not in memory.redact(f"connecting to {URL}")
