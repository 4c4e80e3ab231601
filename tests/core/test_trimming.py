"""Trimming: the newest turns that fit the window are kept, read lazily, newest first."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ContextTooLong
from core.tokens import PER_MESSAGE_TOKENS, PRIMING_TOKENS, ROLE_TOKENS, counter_for
from core.trimming import Budget, fit_newest

costs_lists = st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=60)
budgets = st.integers(min_value=-50, max_value=5_000)


@st.composite
def costs_and_budget(draw: st.DrawFn) -> tuple[list[int], int]:
    """Costs with a budget that is often right at a prefix sum (the off-by-one edges)."""
    costs = draw(costs_lists)
    if draw(st.booleans()):
        return costs, draw(budgets)
    k = draw(st.integers(min_value=1, max_value=len(costs)))
    return costs, sum(costs[:k]) + draw(st.sampled_from([-1, 0, 1]))


class CountingIterator:
    """Yields costs and remembers how many were pulled."""

    def __init__(self, costs: list[int]) -> None:
        self._costs = iter(costs)
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        cost = next(self._costs)
        self.pulled += 1
        return cost


def longest_fitting_prefix(costs: list[int], budget: int) -> int:
    return max(k for k in range(len(costs) + 1) if sum(costs[:k]) <= budget)


# -- Budget ---------------------------------------------------------------------------------


def test_history_budget_leaves_room_for_reply_system_prompt_and_priming():
    budget = Budget(window=8_192, reply_tokens=1_024, system_tokens=100)

    system_cost = 100 + PER_MESSAGE_TOKENS + ROLE_TOKENS
    assert budget.history_tokens == 8_192 - 1_024 - system_cost - PRIMING_TOKENS == 7_061


def test_history_budget_goes_negative_when_the_system_prompt_fills_the_window():
    assert Budget(window=4_096, reply_tokens=1_024, system_tokens=4_000).history_tokens < 0


@given(
    window=st.integers(min_value=1, max_value=200_000),
    reply=st.integers(min_value=1, max_value=20_000),
    system=st.integers(min_value=0, max_value=20_000),
    costs=costs_lists,
)
def test_a_trimmed_request_never_exceeds_the_window(window, reply, system, costs):
    budget = Budget(window=window, reply_tokens=reply, system_tokens=system)
    try:
        kept = fit_newest(costs, budget.history_tokens)
    except ContextTooLong:
        return
    system_cost = counter_for("gpt-4o").message_cost(system)

    assert system_cost + sum(costs[:kept]) + PRIMING_TOKENS + reply <= window


# -- fit_newest: properties -----------------------------------------------------------------


@given(case=costs_and_budget())
def test_fit_newest_keeps_the_longest_prefix_that_fits(case):
    costs, budget = case
    try:
        kept = fit_newest(costs, budget)
    except ContextTooLong:
        assert budget <= 0 or costs[0] > budget
        return

    assert kept >= 1
    assert sum(costs[:kept]) <= budget
    assert kept == longest_fitting_prefix(costs, budget)
    if kept < len(costs):
        assert sum(costs[: kept + 1]) > budget


@given(case=costs_and_budget())
def test_fit_newest_raises_exactly_when_the_newest_alone_does_not_fit(case):
    costs, budget = case
    should_raise = budget <= 0 or costs[0] > budget
    raised = False
    try:
        fit_newest(costs, budget)
    except ContextTooLong:
        raised = True

    assert raised == should_raise


@given(case=costs_and_budget())
def test_fit_newest_pulls_at_most_one_message_past_the_kept_ones(case):
    costs, budget = case
    if budget <= 0:
        return
    source = CountingIterator(costs)
    try:
        kept = fit_newest(source, budget)
    except ContextTooLong:
        assert source.pulled == 1
        return

    assert source.pulled <= kept + 1
    assert source.pulled == min(kept + 1, len(costs))


@given(costs=costs_lists)
def test_a_budget_that_is_not_positive_pulls_nothing(costs):
    source = CountingIterator(costs)

    with pytest.raises(ContextTooLong):
        fit_newest(source, 0)
    assert source.pulled == 0


# -- fit_newest: stories --------------------------------------------------------------------


def test_a_long_chat_keeps_only_the_newest_turns_that_fit():
    assert fit_newest([40, 30, 20, 50, 10], budget=95) == 3


def test_an_older_message_that_does_not_fit_ends_the_history_even_if_older_ones_would():
    assert fit_newest([40, 100, 5, 5], budget=60) == 1


def test_everything_fits_in_a_short_chat():
    assert fit_newest([10, 10, 10], budget=1_000) == 3


def test_an_exact_fit_is_kept():
    assert fit_newest([50, 50], budget=100) == 2


def test_an_empty_history_keeps_nothing():
    assert fit_newest([], budget=100) == 0


def test_a_very_long_history_is_read_only_as_far_as_needed():
    source = CountingIterator([10] * 100_000)

    assert fit_newest(source, budget=105) == 10
    assert source.pulled == 11


def test_the_store_reads_only_the_pages_it_needs():
    pages_read = 0

    def rows_newest_first() -> Iterator[int]:
        nonlocal pages_read
        for _page in range(1_000):
            pages_read += 1
            yield from [25] * 50

    kept = fit_newest(rows_newest_first(), budget=1_500)

    assert kept == 60
    assert pages_read == 2


def test_a_message_too_long_for_the_model_tells_the_person_how_far_over():
    with pytest.raises(ContextTooLong) as caught:
        fit_newest([1_250, 10], budget=1_000)

    assert "too long" in caught.value.user_message
    assert "250 tokens over" in caught.value.user_message
    assert "1250" in str(caught.value)


@pytest.mark.parametrize("budget", [0, -1, -5_000])
def test_a_system_prompt_that_fills_the_window_blames_the_system_prompt(budget):
    with pytest.raises(ContextTooLong) as caught:
        fit_newest([10], budget=budget)

    assert "system prompt is too long" in caught.value.user_message


def test_a_negative_cost_is_a_bug_in_the_caller():
    with pytest.raises(ValueError, match="negative"):
        fit_newest([10, -1], budget=100)
