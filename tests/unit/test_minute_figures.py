"""The agent's figures over the last minute (issue 18 item 2): admission judges "actually free"
on them, so a spike does not turn deployments away and a saturated minute does."""
from collections import namedtuple

from agent.service import MinuteFigures

Times = namedtuple("Times", "user system idle iowait")
GB = 1024 ** 3


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_one_sample_says_nothing_and_two_give_the_cpu_use_between_them():
    clock = Clock()
    minute = MinuteFigures(clock)
    assert minute.sample(Times(10, 0, 90, 0), 4 * GB) == {}
    clock.now += 15
    # 2 cores for 15 s: 30 s of CPU time, 15 of them busy.
    assert minute.sample(Times(25, 0, 105, 0), 2 * GB) == {"cpu_percent_1m": 50.0,
                                                           "memory_available_1m": 2 * GB}


def test_a_spike_in_the_last_frame_is_averaged_over_the_minute():
    clock = Clock()
    minute = MinuteFigures(clock)
    busy = idle = 0.0
    minute.sample(Times(busy, 0, idle, 0), 8 * GB)
    for _ in range(3):                 # 45 quiet seconds: 10 % busy on 2 cores, 8 GB free
        clock.now += 15
        busy, idle = busy + 3, idle + 27
        minute.sample(Times(busy, 0, idle, 0), 8 * GB)
    clock.now += 15
    busy, idle = busy + 27, idle + 3   # then 15 s at 90 %, 2 GB free for a moment
    figures = minute.sample(Times(busy, 0, idle, 0), 2 * GB)
    assert figures == {"cpu_percent_1m": 30.0, "memory_available_1m": int(6.5 * GB)}


def test_samples_older_than_a_minute_drop_out():
    clock = Clock()
    minute = MinuteFigures(clock)
    busy = idle = 0.0
    for step in range(12):             # busy for the first two minutes, then idle
        rate = 30 if step < 8 else 0
        minute.sample(Times(busy, 0, idle, 0), GB)
        clock.now += 15
        busy, idle = busy + rate, idle + 30 - rate
    assert minute.sample(Times(busy, 0, idle, 0), GB)["cpu_percent_1m"] == 0.0
