"""The judge client and MMHal scoring against a real HTTP server on 127.0.0.1 started by the test
(:class:`tests.helpers.judge.JudgeServer`: an OpenAI-compatible chat-completions endpoint whose
behaviour per request is a Python function)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mcmdpo.evaluation.metrics import mmhal
from mcmdpo.evaluation.metrics.judge import JudgeError
from tests.helpers.judge import JudgeServer, Reply, client, completion


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCMDPO_TEST_JUDGE_KEY", "sk-test-secret-123")


def test_reply_model_id_key_header_and_cache(tmp_path):
    with JudgeServer(lambda body, attempt: (200, {}, completion("fine. Rating: 5"), 0)) as server:
        first = client(server.url, tmp_path / "cache").complete([{"role": "user", "content": "hello"}])
        assert (first.content, first.model, first.cached) == ("fine. Rating: 5", "judge-2024-01-01", False)
        request = server.requests[0]
        assert request["path"] == "/v1/chat/completions"
        headers = {k.lower(): v for k, v in request["headers"].items()}  # the openai package sends lowercase
        assert headers["authorization"] == "Bearer sk-test-secret-123"
        assert request["body"] == {
            "model": "judge-x",
            "messages": [{"role": "user", "content": "hello"}],
            "temperature": 0.0,
        }
        again = client(server.url, tmp_path / "cache")
        second = again.complete([{"role": "user", "content": "hello"}])
        assert second.cached and second.content == first.content and len(server.requests) == 1
        assert again.stats == {"requests": 0, "cached": 1, "retries": 0}
    # the cache is one append-only JSONL file per writing process under <cache>/<model>/ (mcmdpo.llm)
    cached_files = list((tmp_path / "cache").rglob("*.jsonl"))
    assert len(cached_files) == 1 and cached_files[0].parent.name == "judge-x"
    assert len(cached_files[0].read_text().splitlines()) == 1
    assert "sk-test-secret" not in cached_files[0].read_text()


def test_429_and_500_are_retried_with_retry_after(tmp_path):
    def behave(body: dict[str, Any], attempt: int) -> Reply:
        text = body["messages"][0]["content"]
        if text == "busy" and attempt == 1:
            return 429, {"Retry-After": "0.05"}, {"error": "rate limited"}, 0
        if text == "broken" and attempt <= 2:
            return 500, {}, {"error": "oops"}, 0
        return 200, {}, completion(f"ok {text}"), 0

    sleeps: list[float] = []
    with JudgeServer(behave) as server:
        judge = client(server.url, None)
        judge._sleep = lambda s: (sleeps.append(s), time.sleep(s))
        replies = judge.complete_many([[{"role": "user", "content": t}] for t in ("busy", "broken", "plain")])
    assert [r.content for r in replies] == ["ok busy", "ok broken", "ok plain"]
    assert [r.attempts for r in replies] == [2, 3, 1]
    assert judge.stats["retries"] == 3 and 0.05 in sleeps  # Retry-After honoured


def test_timeout_is_retried_then_gives_up(tmp_path):
    def behave(body: dict[str, Any], attempt: int) -> Reply:
        slow = body["messages"][0]["content"] == "always slow" or attempt == 1
        return 200, {}, completion("Rating: 4"), 1.0 if slow else 0

    with JudgeServer(behave) as server:
        judge = client(server.url, None, timeout_s=0.3, max_retries=2)
        assert judge.complete([{"role": "user", "content": "slow once"}]).attempts == 2
        with pytest.raises(JudgeError, match="gave up after 3 attempts; last error: timeout"):
            judge.complete([{"role": "user", "content": "always slow"}])


def test_auth_error_fails_at_once_and_names_the_variable(tmp_path):
    with JudgeServer(lambda body, attempt: (401, {}, {"error": "bad key"}, 0)) as server:
        with pytest.raises(JudgeError, match=r"HTTP 401 .*check the API key in \$MCMDPO_TEST_JUDGE_KEY"):
            client(server.url, None).complete([{"role": "user", "content": "x"}])
        assert len(server.requests) == 1


def test_missing_key_variable_is_reported_without_a_request(monkeypatch):
    monkeypatch.delenv("MCMDPO_TEST_JUDGE_KEY")
    with pytest.raises(JudgeError, match=r"\$MCMDPO_TEST_JUDGE_KEY"):
        client("http://127.0.0.1:9/v1", None)


def test_concurrency_is_bounded(tmp_path):
    with JudgeServer(lambda body, attempt: (200, {}, completion("Rating: 3"), 0.1)) as server:
        judge = client(server.url, None, concurrency=3)
        judge.complete_many([[{"role": "user", "content": str(i)}] for i in range(9)])
    assert server.max_in_flight == 3


# ---------------------------------------------------------------- MMHal


def mmhal_records(per_type: int = 2) -> list[dict[str, Any]]:
    """MMHal template records (interleaved types, as the official file) with model responses."""
    records = []
    for i in range(per_type * 8):
        records.append(
            {
                "id": i,
                "question_type": mmhal.QUESTION_TYPES[i % 8],
                "question_topic": "topic",
                "image_id": f"img{i}",
                "image_src": f"https://example.invalid/img{i}.jpg",
                "image_content": ["Dog", "Grass"],
                "question": f"question {i}?",
                "gt_answer": f"answer {i}",
                "response": f"response {i}",
            }
        )
    return records


# the judge's rating per item; None: a reply without a parsable rating, "both": two ratings
RATINGS: list[Any] = [6, 5, 2, None, 4, 3, 0, 1, 6, "both", 5, 4, 3, 2, 6, 6]


def rating_reply(body: dict[str, Any], attempt: int) -> Reply:
    prompt = body["messages"][0]["content"]
    i = int(prompt.split("### LMM Response to Evaluate\nresponse ")[1].split()[0])
    rating = RATINGS[i]
    if rating is None:
        return 200, {}, completion("The response is fine. Score: 5/6"), 0
    if rating == "both":
        return 200, {}, completion("Rating: 2 at first, then Rating: 5"), 0
    return 200, {}, completion(f"Explanation.\nRating: {rating}, details"), 0


def test_mmhal_scores_against_hand_computed_values(tmp_path):
    records = mmhal_records()
    with JudgeServer(rating_reply) as server:
        metrics, samples = mmhal.score_mmhal(records, client(server.url, tmp_path / "cache"))
        prompts = [r["body"]["messages"][0]["content"] for r in server.requests]
        prompt = next(p for p in prompts if p.endswith("\nresponse 0\n"))
        assert "### Image Contents\nDog, Grass\n\n### Question\nquestion 0?" in prompt
        assert (
            "### Standard Human-Generated Answer\nanswer 0\n\n### LMM Response to Evaluate\nresponse 0\n"
            in prompt
        )
    ratings = [0 if r in (None, "both") else r for r in RATINGS]
    assert [s["rating"] for s in samples] == ratings
    assert metrics["score"] == pytest.approx(sum(ratings) / 16)
    assert metrics["hallucination_rate"] == pytest.approx(sum(r < 3 for r in ratings) / 16)
    parsed = [r for r in RATINGS if r not in (None, "both")]
    assert metrics["parse_failures"] == 2 and metrics["parse_failed_ids"] == [3, 9]
    assert metrics["score_excluding_parse_failures"] == pytest.approx(sum(parsed) / 14)
    for k, name in enumerate(mmhal.QUESTION_TYPES):
        assert metrics["per_type"][name] == pytest.approx((ratings[k] + ratings[k + 8]) / 2), name
    assert metrics["judge"]["returned_models"] == ["judge-2024-01-01"]
    assert metrics["judge"]["model"] == "judge-x" and "sk-test" not in json.dumps(metrics)
    with JudgeServer(rating_reply) as server:  # a re-run is answered from the cache
        again, _ = mmhal.score_mmhal(records, client(server.url, tmp_path / "cache"))
        assert server.requests == [] and again["score"] == metrics["score"]
        assert again["judge"]["cached"] == 16


def test_parse_rating_follows_upstream():
    assert mmhal.parse_rating("blah. Rating: 4, somewhat informative") == 4
    assert mmhal.parse_rating("RATING: 6") == 6
    assert mmhal.parse_rating("**Rating:** 5") is None  # upstream's substring test misses it too
    assert mmhal.parse_rating("Rating: 3 or Rating: 4") is None
    assert mmhal.parse_rating("no rating") is None


def test_mmhal_bad_record_is_named():
    bad = mmhal_records(1)
    bad[2]["question_type"] = "colour"
    with pytest.raises(ValueError, match=r"record 3: question_type 'colour'"):
        mmhal.check_records(bad, "pred.jsonl")


def test_mmhal_files_template_with_folder_or_jsonl_with_base64(tmp_path):
    import base64

    from mcmdpo.evaluation.benchmarks import read_items

    records = mmhal_records(1)
    for r in records:
        r.pop("id"), r.pop("response")
    (tmp_path / "images").mkdir()
    for i in range(8):  # half named like image_src, half like <image_id>.jpg
        name = f"img{i}.jpg" if i % 2 else f"img{i}.jpg".replace("img", "x")
        (tmp_path / "images" / name).write_bytes(b"jpeg")
        records[i]["image_id"] = f"x{i}" if i % 2 == 0 else records[i]["image_id"]
    (tmp_path / "template.json").write_text(json.dumps(records))
    items = read_items("mmhal", {"file": str(tmp_path / "template.json"), "images": str(tmp_path / "images")})
    assert [it.id for it in items] == list(range(8))
    assert (
        items[1].image == tmp_path / "images" / "img1.jpg"
        and items[0].image == tmp_path / "images" / "x0.jpg"
    )
    assert items[3].fields["question_type"] == "counting" and items[3].fields["image_content"] == [
        "Dog",
        "Grass",
    ]
    lines = [{**r, "image": base64.b64encode(b"img%d" % i).decode()} for i, r in enumerate(records)]
    (tmp_path / "mmhal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    items = read_items("mmhal", {"file": str(tmp_path / "mmhal.jsonl")})
    assert items[5].image == b"img5"
    (tmp_path / "images" / "img3.jpg").unlink()
    with pytest.raises(ValueError, match=r"template.json: record 4: image not found .* \(tried img3.jpg\)"):
        read_items("mmhal", {"file": str(tmp_path / "template.json"), "images": str(tmp_path / "images")})
