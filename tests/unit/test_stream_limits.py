"""The controller's caps on followed logs (app/controller/internal.py StreamLimits): the logic
alone; tests/controller/test_log_follow.py drives them through real sockets."""
from app.controller.internal import StreamLimits


def test_a_user_at_the_per_user_cap_is_refused_while_others_are_admitted():
    limits = StreamLimits(per_user=2, in_all=10)
    assert limits.admit(1) is None and limits.admit(1) is None
    assert "2 logs already, the most per user" in limits.admit(1)
    assert limits.admit(2) is None
    assert limits.open == 3  # the refusal took no place


def test_at_the_cap_in_all_everyone_is_refused_until_a_place_is_released():
    limits = StreamLimits(per_user=5, in_all=2)
    assert limits.admit(1) is None and limits.admit(None) is None  # None: no user named
    assert "2 logs are followed in all" in limits.admit(2)
    limits.release(1)
    assert limits.admit(2) is None
    assert limits.by_viewer == {2: 1}  # user 1's count is gone with its last stream
