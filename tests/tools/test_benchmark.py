"""tools/analysis/benchmark.py: the words around its ratios."""
from tests.tools.common import load_tool

benchmark = load_tool('analysis/benchmark.py')


def test_speed_words_say_slower_below_one():
    # ratio = the other time / ours: 0.4 means ours took 2.5 times as long.
    assert benchmark.speed_words(2.03) == '2.03x faster'
    assert benchmark.speed_words(1.0) == '1.00x faster'
    assert benchmark.speed_words(0.40) == '2.50x slower'
