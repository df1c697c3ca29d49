"""The wire contract's frame decoding (agent/protocol.py): what both sides refuse to read."""
import pytest

from agent.protocol import ProtocolError, decode


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_a_frame_with_a_number_json_has_not_is_refused(number):
    # Python's json reads NaN and Infinity (and a float too large as Infinity); JSON has none of
    # them, and a JSON column of PostgreSQL refuses them: one in a resources frame failed the
    # write of every node's figures.
    with pytest.raises(ProtocolError, match="not a finite number"):
        decode('{"type": "resources", "host": {"cpus": ' + number + "}}")


def test_finite_numbers_large_ones_included_are_read_as_they_are():
    frame = decode('{"type": "resources", "host": {"cpus": 2.5, "memory_total": ' + str(10 ** 30)
                   + ', "x": 1e308}}')
    assert frame["host"] == {"cpus": 2.5, "memory_total": 10 ** 30, "x": 1e308}

