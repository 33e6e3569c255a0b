"""RequestBatcher: adaptive batching on one event loop, with a fake scorer (no Feast, no Booster).

The batcher has no timer: a request that finds it idle is scored at once, and requests that arrive
while a batch runs go together into the next call. The fake below is the `predict` coroutine the
batcher is given (the interface of `ServingRuntime.predict_async`); a gate holds its calls so a test
can line requests up behind a running batch. No time passes in these tests: the loop only yields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from mlstack.serving.runtime import RequestBatcher
from mlstack.serving.scoring import FeatureStoreUnavailable, Prediction

Rows = Sequence[Mapping[str, Any]]
TURNS = 20  # loop iterations to let queued work run; far more than a batch needs, and no wall-clock time


def prediction_for(row: Mapping[str, Any]) -> Prediction:
    """A distinct, recognisable prediction per customer (probability = customer_id / 1000)."""
    probability = row["customer_id"] / 1000
    return Prediction(
        default_probability=probability,
        decision="decline" if probability >= 0.5 else "approve",
        threshold=0.5,
        model_name="fake",
        model_version="1",
        features_found=True,
        missing_features=[],
        stale_features=[],
        freshest_feature_age_seconds=None,
        stalest_feature_age_seconds=None,
    )


class FakeScorer:
    """`predict(rows)` as the batcher calls it: records each call, answers row by row.

    Rows whose customer_id is in `bad` make the whole call fail with ValueError (a bad request);
    `outage` makes every call fail as a Redis outage does. Each call waits for `gate` while it is
    clear, so requests can pile up behind a running batch.
    """

    def __init__(self, bad: frozenset[int] = frozenset(), outage: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.bad = bad
        self.outage = outage
        self.gate = asyncio.Event()
        self.gate.set()

    async def predict(self, rows: Rows) -> list[Prediction]:
        self.calls.append([row["customer_id"] for row in rows])
        await self.gate.wait()
        if self.outage:
            raise FeatureStoreUnavailable("redis down", "online_store_timeout")
        if self.bad.intersection(row["customer_id"] for row in rows):
            raise ValueError("bad row")
        return [prediction_for(row) for row in rows]


def request(*customer_ids: int) -> list[dict[str, Any]]:
    return [{"customer_id": customer_id} for customer_id in customer_ids]


def probabilities(predictions: list[Prediction]) -> list[float]:
    return [p.default_probability for p in predictions]


async def turns(n: int = TURNS) -> None:
    """Let the loop run every ready task `n` times over (no sleeping)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def behind_a_running_batch(
    scorer: FakeScorer, batcher: RequestBatcher, first: Rows, later: list[Rows]
) -> tuple[list[Any], list[asyncio.Task[list[Prediction]]]]:
    """Submit `first`, hold its call, submit `later` meanwhile, release: (results or exceptions, tasks)."""
    scorer.gate.clear()
    first_task = asyncio.create_task(batcher.submit(first))
    await turns()
    assert len(scorer.calls) == 1, "the first request should be in its call, held by the gate"
    later_tasks = [asyncio.create_task(batcher.submit(rows)) for rows in later]
    await turns()
    assert len(scorer.calls) == 1, "later requests must wait for the running batch"
    scorer.gate.set()
    tasks = [first_task, *later_tasks]
    return await asyncio.gather(*tasks, return_exceptions=True), tasks


def test_batcher_scores_a_request_at_once_and_alone_when_idle():
    async def scenario() -> None:
        scorer = FakeScorer()
        batcher = RequestBatcher(scorer.predict)
        task = asyncio.create_task(batcher.submit(request(7)))
        await turns()  # no timer to wait for: the loop only has to get to it
        assert task.done()
        assert probabilities(task.result()) == [0.007]
        assert scorer.calls == [[7]]
        assert probabilities(await batcher.submit(request(8, 9))) == [0.008, 0.009]
        assert scorer.calls == [[7], [8, 9]]  # sequential requests are never held back for company

    asyncio.run(scenario())


def test_batcher_scores_requests_that_arrive_together_in_one_call():
    async def scenario() -> None:
        scorer = FakeScorer()
        batcher = RequestBatcher(scorer.predict)
        results = await asyncio.gather(*(batcher.submit(request(i)) for i in range(1, 6)))
        assert scorer.calls == [[1, 2, 3, 4, 5]]
        assert [probabilities(r) for r in results] == [[0.001], [0.002], [0.003], [0.004], [0.005]]

    asyncio.run(scenario())


def test_batcher_scores_waiting_requests_in_one_call_and_answers_each_caller_in_order():
    async def scenario() -> None:
        scorer = FakeScorer()
        batcher = RequestBatcher(scorer.predict)
        later = [request(2), request(30, 31, 32), request(4), request(50, 51)]
        results, _ = await behind_a_running_batch(scorer, batcher, request(1), later)
        assert scorer.calls == [[1], [2, 30, 31, 32, 4, 50, 51]]  # everything that waited: one call, in order
        assert [probabilities(r) for r in results] == [
            [0.001],
            [0.002],
            [0.030, 0.031, 0.032],
            [0.004],
            [0.050, 0.051],
        ]

    asyncio.run(scenario())


def test_batcher_caps_a_batch_at_max_rows_without_splitting_a_request():
    async def scenario() -> None:
        scorer = FakeScorer()
        batcher = RequestBatcher(scorer.predict, max_rows=3)
        later = [request(10, 11), request(20, 21), request(30), request(40, 41, 42), request(50, 51, 52, 53)]
        results, _ = await behind_a_running_batch(scorer, batcher, request(1), later)
        # 2+2 > 3 closes a batch; a request larger than max_rows still goes whole, alone.
        assert scorer.calls == [[1], [10, 11], [20, 21, 30], [40, 41, 42], [50, 51, 52, 53]]
        assert [len(r) for r in results] == [1, 2, 2, 1, 3, 4]

    asyncio.run(scenario())


def test_batcher_delivers_an_outage_to_every_waiting_request_in_one_call():
    async def scenario() -> None:
        scorer = FakeScorer(outage=True)
        batcher = RequestBatcher(scorer.predict)
        results, _ = await behind_a_running_batch(scorer, batcher, request(1), [request(2), request(3, 4)])
        assert all(isinstance(r, FeatureStoreUnavailable) for r in results), results
        assert {r.cause for r in results} == {"online_store_timeout"}
        assert scorer.calls == [[1], [2, 3, 4]]  # no per-request retries: they would multiply the timeouts

        scorer.outage = False  # Redis is back: the batcher was not left broken
        assert probabilities(await batcher.submit(request(5))) == [0.005]

    asyncio.run(scenario())


def test_batcher_delivers_a_failure_of_a_lone_request_to_its_caller():
    async def scenario() -> None:
        scorer = FakeScorer(bad=frozenset({13}))
        batcher = RequestBatcher(scorer.predict)
        with pytest.raises(ValueError, match="bad row"):
            await batcher.submit(request(13))
        assert scorer.calls == [[13]]
        assert probabilities(await batcher.submit(request(1))) == [0.001]

    asyncio.run(scenario())


def test_batcher_isolates_a_request_that_breaks_the_batch():
    async def scenario() -> None:
        scorer = FakeScorer(bad=frozenset({13}))
        batcher = RequestBatcher(scorer.predict)
        later = [request(2), request(13), request(3, 4)]
        results, _ = await behind_a_running_batch(scorer, batcher, request(1), later)
        assert probabilities(results[0]) == [0.001]
        assert probabilities(results[1]) == [0.002]
        assert isinstance(results[2], ValueError)  # only the request that broke the batch fails
        assert probabilities(results[3]) == [0.003, 0.004]
        assert scorer.calls == [[1], [2, 13, 3, 4], [2], [13], [3, 4]]  # the failed batch, then each alone

    asyncio.run(scenario())


def test_batcher_answers_the_others_when_a_waiting_caller_goes_away():
    async def scenario() -> None:
        scorer = FakeScorer()
        batcher = RequestBatcher(scorer.predict)
        scorer.gate.clear()
        first = asyncio.create_task(batcher.submit(request(1)))
        await turns()
        gone, stays = (asyncio.create_task(batcher.submit(request(i))) for i in (2, 3))
        await turns()
        gone.cancel()  # the client disconnected while its request waited
        scorer.gate.set()
        assert probabilities(await first) == [0.001]
        assert probabilities(await stays) == [0.003]
        assert gone.cancelled()

    asyncio.run(scenario())


def test_batcher_rejects_a_non_positive_max_rows():
    with pytest.raises(ValueError, match="max_rows must be positive, got 0"):
        RequestBatcher(FakeScorer().predict, max_rows=0)
