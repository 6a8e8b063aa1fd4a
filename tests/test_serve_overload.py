"""Overload and request bounds of the pool, below Ray (issue 26): the proxy's retry middleware at the ASGI level
around a downstream app of our own, the replica's forward queue (admission control, dropping requests whose
caller is gone) and group splitting with the real scorer on the tiny model, and the certificate rule.
The same behaviours through real Ray Serve and HTTP are in tests/test_serve.py."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import FIXTURES


# -- the proxy's retry middleware --------------------------------------------------------------------------
class _LosingApp:
    """Downstream of the middleware: reads the request as Serve's proxy does (body, then waits on the client),
    then fails without answering — what the proxy does when a replica dies. Counts its calls."""

    def __init__(self, wait_for_client: bool):
        self.calls = 0
        self.wait_for_client = wait_for_client

    async def __call__(self, scope, receive, send):
        self.calls += 1
        while (await receive()).get("more_body"):
            pass
        if self.wait_for_client:
            await receive()  # the client's next message: its disconnect
        raise RuntimeError("replica died")


def _call(middleware, path: str, messages: list[dict]) -> list[dict]:
    sent = []
    queue = list(messages)

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    body = b'{"responses": ["hi"]}'
    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(middleware(scope, receive, send))
    return sent


def test_middleware_never_replays_a_request_whose_client_disconnected():
    from rlhf_rm.serve.proxy_retry import RetryLostRequests

    app = _LosingApp(wait_for_client=True)
    sent = _call(RetryLostRequests(app, route_prefix="/"), "/score",
                 [{"type": "http.request", "body": b'{"responses": ["hi"]}', "more_body": False}])
    assert app.calls == 1 and sent == []  # dispatched once; nobody to answer
    # A client that stays connected still gets its request retried, then a 503 with Retry-After.
    connected = _LosingApp(wait_for_client=False)
    sent = _call(RetryLostRequests(connected, route_prefix="/"), "/score",
                 [{"type": "http.request", "body": b'{"responses": ["hi"]}', "more_body": False}])
    assert connected.calls == 3 and sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]


def test_middleware_retries_only_this_apps_routes():
    from rlhf_rm.serve.proxy_retry import RetryLostRequests

    body = [{"type": "http.request", "body": b'{"responses": ["hi"]}', "more_body": False}]
    for path, prefix, calls in (("/other_app/score", "/", 1), ("/myscore", "/", 1), ("/score", "/rm", 1),
                                ("/rm/score", "/rm", 3), ("/rm/v1/embeddings/", "/rm", 3), ("/score", "/", 3)):
        app = _LosingApp(wait_for_client=False)
        _call(RetryLostRequests(app, route_prefix=prefix), path, list(body))
        assert app.calls == calls, (path, prefix)


def test_middleware_adds_retry_after_to_a_bare_503():
    from rlhf_rm.serve.proxy_retry import RetryLostRequests

    async def unavailable(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"no replicas"})

    sent = _call(RetryLostRequests(unavailable, route_prefix="/"), "/score",
                 [{"type": "http.request", "body": b"{}", "more_body": False}])
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]


def test_proxy_replay_limit_is_the_pools_body_limit():
    from rlhf_rm.serve.config import ServeConfig
    from rlhf_rm.serve.proxy_retry import MAX_REPLAY_BYTES, RetryLostRequests

    assert MAX_REPLAY_BYTES == ServeConfig().max_body_bytes
    assert RetryLostRequests(None, max_replay_bytes=1234).max_replay_bytes == 1234


# -- the replica's queue with the real scorer ---------------------------------------------------------------
@pytest.fixture(scope="module")
def scorer(tmp_path_factory, tiny_model, tiny_tokenizer):
    from rlhf_rm.checkpoint.export import export_checkpoint
    from rlhf_rm.checkpoint.scorer import RewardScorer

    checkpoint = export_checkpoint(tiny_model, tiny_tokenizer, tmp_path_factory.mktemp("overload") / "a",
                                 {"max_length": 512})
    return RewardScorer(str(checkpoint))


@pytest.fixture(scope="module")
def long_texts():
    rows = [json.loads(line) for line in (FIXTURES / "hh_dev_small.jsonl").read_text().splitlines()]
    return [(row["chosen"] * 4)[:1500] for row in rows]


def test_a_cancelled_request_is_never_forwarded_and_overload_is_refused_at_once(scorer, long_texts):
    from rlhf_rm.serve.deployment import _ForwardQueue, _warm_up
    from rlhf_rm.serve.protocol import PoolOverloaded

    async def scenario():
        queue = _ForwardQueue(ThreadPoolExecutor(1))
        _warm_up(scorer, queue)
        queue.max_queue_s = 3600.0
        blocker_items = [(scorer, "", [text]) for text in (long_texts * 8)[:96]]
        blocker = asyncio.create_task(queue.run(blocker_items, 96 * 1500))
        while not queue.running[0]:  # the blocker's forward starts
            await asyncio.sleep(0.001)
        gone = asyncio.create_task(queue.run([(scorer, "", ["I left."])] * 3, 21))
        await asyncio.sleep(0)
        gone.cancel()
        # Past max_queue_s a request is refused before it queues, saying when to come back.
        queue.max_queue_s = 1e-3
        with pytest.raises(PoolOverloaded) as refused:
            await queue.run([(scorer, "", ["too late"])], 8)
        assert refused.value.retry_after_s >= 1 and refused.value.status_code == 503
        await blocker
        return queue

    queue = asyncio.run(scenario())
    assert queue.texts == 96 and queue.dropped == 3 and queue.refused == 1 and queue.queued_chars == 0


def test_a_group_is_split_into_forwards_within_tokens_per_forward_and_scores_exactly(scorer, long_texts,
                                                                                     monkeypatch):
    """A big group used to be one row with a dense T x T mask; now rows stay within the budget."""
    import rlhf_rm.checkpoint.scorer

    rows = []
    real = rlhf_rm.checkpoint.scorer.score_groups

    def recording(model, groups, *args, **kwargs):
        rows.extend(group.shared_length() for group in groups)
        return real(model, groups, *args, **kwargs)

    monkeypatch.setattr(rlhf_rm.checkpoint.scorer, "score_groups", recording)
    monkeypatch.setattr(scorer, "tokens_per_batch", 2048)
    prompt = "\n\nHuman: Tell me about foxes.\n\nAssistant:"
    responses = [text[:400] for text in long_texts] * 3
    grouped = scorer.score_group(prompt, responses)
    assert len(rows) > 1 and max(rows) <= 2048, rows
    alone = scorer.score([prompt] * len(responses), responses)
    assert max(abs(g.score - a.score) for g, a in zip(grouped, alone)) <= 1e-4


def test_an_empty_text_is_refused_by_index_and_its_batch_mates_are_scored(scorer):
    from rlhf_rm.serve.deployment import _score_items
    from rlhf_rm.serve.protocol import BadRequest

    results, _ = _score_items([(scorer, "", ["fine"]), (scorer, "", [""]), (scorer, "", ["also fine"])])
    assert isinstance(results[1], BadRequest) and "responses[0]" in str(results[1]) and "zero tokens" in str(results[1])
    assert results[0][0] == pytest.approx([scorer.score([""], ["fine"])[0].score], abs=1e-5)
    assert results[2][0] == pytest.approx([scorer.score([""], ["also fine"])[0].score], abs=1e-5)
    too_big, _ = _score_items([(scorer, "Hi", ["a b c"] * 50)], max_group_tokens=20)
    assert isinstance(too_big[0], BadRequest) and too_big[0].too_large and "max_group_tokens" in str(too_big[0])


def test_serving_refuses_an_uncertified_checkpoint_unless_allowed(tmp_path, tiny_model, tiny_tokenizer, caplog):
    from rlhf_rm.checkpoint.certificate import CertificateError
    from rlhf_rm.checkpoint.export import export_checkpoint
    from rlhf_rm.checkpoint.scorer import RewardScorer
    from rlhf_rm.serve.deployment import _refuse_uncertified

    checkpoint = export_checkpoint(tiny_model, tiny_tokenizer, tmp_path / "old", {"max_length": 512}, certify=False)
    scorer = RewardScorer(str(checkpoint))  # score/evaluate keep loading it, with a warning
    assert not scorer.certified
    with pytest.raises(CertificateError, match="allow_uncertified=true"):
        _refuse_uncertified(scorer, allowed=False)
    with caplog.at_level("WARNING"):
        _refuse_uncertified(scorer, allowed=True)
    assert "UNCERTIFIED" in caplog.text
