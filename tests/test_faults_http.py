"""Fault suite for servers and models (issue 25, items 1, 2, 3, 10, 12, 13): a loopback fake OpenAI-compatible
server (:mod:`fake_openai`) answering garbage, bad UTF-8, empty choices, 500s, hangs; an unreachable hub; prompts
longer than the model's context. Every test is bounded to seconds (client timeouts of ~1 s)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cada.errors import CadaError
from cada.models import OpenAIGenerator, SamplingParams, make_generator

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI, fake_server  # noqa: E402, F401  (the fixture, one definition)


CHAT = [{"role": "user", "content": "Say hi."}]
SECRET = "sk-test-SECRET-4242"
RUBRIC_ANSWER = "#overall_reasoning fine\n#scores\n1.a no refusal\n1.b 0\n2.a ok\n2.b 4\n3.a ok\n3.b 5\n"


def _gen(server, **kw) -> OpenAIGenerator:
    opts = dict(timeout=1.0, max_retries=2, backoff=0.01, show_progress=False, api_key=SECRET)
    return OpenAIGenerator(server.base_url, "fake-model", **{**opts, **kw})


def _one_line(message: str, server_url: str) -> None:
    assert "\n" not in message and len(message) < 800, message
    assert server_url in message, message
    assert SECRET not in message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: connections are refused


def _retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cada.models.http" and "retrying in" in r.getMessage()]


# -- 1: a 200 that is not JSON, or not UTF-8 ------------------------------------------------------

@pytest.mark.parametrize("ctype", ["text/html", "application/json"])
def test_a_body_that_is_not_json_is_one_line_naming_the_server(fake_server, ctype):
    fake_server.reply("garbage", ctype=ctype)
    with pytest.raises(CadaError) as e:
        _gen(fake_server).generate([CHAT])
    msg = str(e.value)
    _one_line(msg, fake_server.base_url)
    assert "not JSON" in msg and "502 Bad Gateway" in msg and "\x07" not in msg
    assert len(msg) < 500  # the answer is quoted to ~200 characters, not whole
    assert fake_server.count == 1  # a garbage answer is not retried


def test_a_body_that_is_not_utf8_is_one_line(fake_server):
    fake_server.reply("bad_utf8")
    with pytest.raises(CadaError) as e:
        _gen(fake_server).generate([CHAT])
    _one_line(str(e.value), fake_server.base_url)
    assert "not valid UTF-8" in str(e.value)


def test_a_bad_answer_through_the_cli_is_one_line_and_no_traceback(fake_server):
    from typer.testing import CliRunner

    from cada.cli import app

    fake_server.reply("garbage")
    res = CliRunner().invoke(app, ["reason", "Say hi", "--mode", "none", "--base-url", fake_server.base_url,
                                   "--model", "m", "--max-new-tokens", "8"])
    assert res.exit_code != 0
    assert isinstance(res.exception, CadaError), res.exception  # main() prints it as one line, exit status 1
    _one_line(str(res.exception), fake_server.base_url)
    assert "not JSON" in str(res.exception)


# -- 2: no choices, or a choice without a message -------------------------------------------------

@pytest.mark.parametrize("mode,says", [("empty_choices", "no choices"), ("no_content", "no message content")])
def test_an_answer_without_a_completion_is_a_clear_error(fake_server, mode, says):
    fake_server.reply(mode)
    with pytest.raises(CadaError) as e:
        _gen(fake_server).generate([CHAT])
    _one_line(str(e.value), fake_server.base_url)
    assert says in str(e.value)


def test_an_error_object_in_a_200_is_a_clear_error(fake_server):
    fake_server.reply("json", body={"error": {"message": "model is loading"}})
    with pytest.raises(CadaError, match="model is loading"):
        _gen(fake_server).generate([CHAT])


# -- 3: timeouts and retries ----------------------------------------------------------------------

def test_a_server_that_never_answers_times_out_visibly_then_fails(fake_server, caplog):
    caplog.set_level(logging.WARNING, logger="cada.models.http")
    fake_server.reply("hang")
    t0 = time.perf_counter()
    with pytest.raises(CadaError) as e:
        _gen(fake_server, timeout=0.5, max_retries=1).generate([CHAT])
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    _one_line(msg, fake_server.base_url)
    assert "no answer within 0.5 s" in msg and "2 attempts" in msg
    lines = _retry_lines(caplog)
    assert len(lines) == 1 and "attempt 1 of 2" in lines[0] and "retrying in 0.01 s" in lines[0], lines
    assert fake_server.count == 2


def test_a_500_is_retried_with_backoff_then_reported(fake_server, caplog):
    caplog.set_level(logging.WARNING, logger="cada.models.http")
    fake_server.reply("error", status=500, message="CUDA error: device-side assert")
    with pytest.raises(CadaError) as e:
        _gen(fake_server, max_retries=2, backoff=0.02).generate([CHAT])
    _one_line(str(e.value), fake_server.base_url)
    assert "HTTP 500" in str(e.value) and "3 attempts" in str(e.value)
    lines = _retry_lines(caplog)
    assert ["attempt 1 of 3" in lines[0], "attempt 2 of 3" in lines[1]] == [True, True], lines
    assert "retrying in 0.02 s" in lines[0] and "retrying in 0.04 s" in lines[1]  # exponential
    assert fake_server.count == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_4xx_is_not_retried(fake_server, caplog, status):
    caplog.set_level(logging.WARNING, logger="cada.models.http")
    fake_server.reply("error", status=status, message="bad request")
    with pytest.raises(CadaError) as e:
        _gen(fake_server, max_retries=3).generate([CHAT])
    _one_line(str(e.value), fake_server.base_url)
    assert f"HTTP {status}" in str(e.value)
    assert fake_server.count == 1 and not _retry_lines(caplog)


def test_a_429_is_retried(fake_server, caplog):
    caplog.set_level(logging.WARNING, logger="cada.models.http")
    fake_server.reply("error", status=429, times=1).reply("ok", text="fine")
    assert _gen(fake_server).generate([CHAT]) == [["fine"]]
    assert fake_server.count == 2 and len(_retry_lines(caplog)) == 1


def test_an_unreachable_server_is_named(caplog):
    caplog.set_level(logging.WARNING, logger="cada.models.http")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    gen = OpenAIGenerator(url, "m", timeout=1, max_retries=1, backoff=0.01, show_progress=False)
    with pytest.raises(CadaError) as e:
        gen.generate([CHAT])
    _one_line(str(e.value), url)
    assert "cannot reach" in str(e.value)
    assert len(_retry_lines(caplog)) == 1
    with pytest.raises(CadaError, match="cannot reach"):
        gen.check()


def test_timeout_and_retries_are_settable_through_make_generator(fake_server):
    gen = make_generator("m", base_url=fake_server.base_url, timeout=0.7, max_retries=5, backoff=0.25,
                         show_progress=False, device="cpu")
    assert isinstance(gen, OpenAIGenerator)
    assert (gen.timeout, gen.max_retries, gen.backoff) == (0.7, 5, 0.25)
    assert gen._client.max_retries == 0  # the generator's own loop retries, visibly
    assert gen._client.timeout == 0.7
    default = make_generator("m", base_url=fake_server.base_url, timeout=None, max_retries=None)
    assert (default.timeout, default.max_retries) == (120.0, 3)
    for bad in (dict(timeout=0), dict(timeout=float("inf")), dict(timeout=float("nan")), dict(max_retries=-1),
                dict(max_retries=1.5), dict(backoff=-1)):
        with pytest.raises(CadaError):
            make_generator("m", base_url=fake_server.base_url, **bad)


def test_a_run_that_completes_after_two_500s(fake_server, caplog):
    caplog.set_level(logging.WARNING, logger="cada.models.http")
    fake_server.reply("error", status=500, times=2).reply("ok", text="Hello there.")
    gen = _gen(fake_server, max_retries=3)
    assert gen.generate([CHAT], SamplingParams(max_new_tokens=8)) == [["Hello there."]]
    lines = _retry_lines(caplog)
    assert len(lines) == 2 and "attempt 1 of 4" in lines[0] and "attempt 2 of 4" in lines[1], lines
    assert all(fake_server.base_url in line and "HTTP 500" in line for line in lines)
    assert fake_server.count == 3 and gen.last_stats["retries"] == 2
    assert fake_server.requests[-1]["max_tokens"] == 8
    assert fake_server.headers[-1].get("authorization") == f"Bearer {SECRET}"  # sent, never shown


def test_the_key_is_scrubbed_from_what_a_server_echoes(fake_server, caplog):
    caplog.set_level(logging.WARNING, logger="cada.models.http")
    fake_server.reply("error", status=500, message=f"bad key {SECRET}")
    with pytest.raises(CadaError) as e:
        _gen(fake_server, max_retries=1).generate([CHAT])
    assert SECRET not in str(e.value) and "***" in str(e.value)
    assert SECRET not in caplog.text and SECRET not in repr(_gen(fake_server))


def test_generate_each_keeps_going_and_stops_sending_once_the_server_is_gone(fake_server):
    fake_server.reply("ok", text="a", times=1).reply("garbage", times=1).reply("ok", text="c", times=1)
    gen = _gen(fake_server, concurrency=1)
    out = gen.generate_each([CHAT] * 3)
    assert out[0] == ["a"] and out[2] == ["c"] and isinstance(out[1][0], CadaError)
    assert gen.last_stats["failed"] == 1

    fake_server.reply("hang")
    gen = _gen(fake_server, concurrency=2, timeout=0.3, max_retries=0)
    before, t0 = fake_server.count, time.perf_counter()
    out = gen.generate_each([CHAT] * 10)
    assert time.perf_counter() - t0 < 3
    assert all(isinstance(o[0], CadaError) for o in out) and gen.last_stats["failed"] == 10
    assert fake_server.count - before == 2  # the two in flight; the other eight were never sent
    assert sum("[not sent:" in str(o[0]) for o in out) == 8
    assert all(str(o[0]).startswith(f"the server at {fake_server.base_url} gave no answer") for o in out)


# -- 13 (HTTP half): the server says the prompt is too long ---------------------------------------

def test_a_context_length_complaint_is_a_clear_error(fake_server):
    fake_server.reply("error", status=400, message="This model's maximum context length is 2048 tokens. However, "
                                                   "you requested 30000 tokens (29744 in the messages, 256 in the "
                                                   "completion).")
    with pytest.raises(CadaError) as e:
        _gen(fake_server).generate([CHAT])
    msg = str(e.value)
    _one_line(msg, fake_server.base_url)
    assert "longer than" in msg and "max_new_tokens" in msg and "2048" in msg
    assert fake_server.count == 1


# -- 10 (the judge's half): failed rows recorded and counted --------------------------------------

def test_rubric_judge_records_and_counts_failed_rows(fake_server):
    from cada.judges.rubric import RubricJudge

    fake_server.reply("ok", text=RUBRIC_ANSWER, times=1).reply("garbage", times=1)
    fake_server.reply("ok", text="no scores here", times=1)
    judge = RubricJudge(_gen(fake_server, concurrency=1))
    results = judge.judge(["p1", "p2", "p3"], ["r1", "r2", "r3"])
    assert results[0].score == 0.875 and not results[0].failed
    assert results[1].failed and results[1].label is None and results[1].score is None
    assert results[1].error.startswith("judge failed: ") and "not JSON" in results[1].error
    assert results[2].error.startswith("unparseable") and not results[2].failed
    assert judge.failed == 1
    assert judge.last_stats == dict(n=3, failed=1, unparseable=1, scored=1, first_error=results[1].error)


def test_rubric_judge_over_an_unreachable_server_fails_every_row_fast():
    from cada.judges.rubric import RubricJudge

    url = f"http://127.0.0.1:{_closed_port()}/v1"
    judge = RubricJudge(OpenAIGenerator(url, "m", timeout=1, max_retries=1, backoff=0.01, show_progress=False))
    t0 = time.perf_counter()
    results = judge.judge(["p"] * 20, ["r"] * 20)
    assert time.perf_counter() - t0 < 5
    assert all(r.failed and r.label is None for r in results)
    assert judge.failed == 20 == judge.last_stats["n"]
    assert "cannot reach" in judge.last_stats["first_error"] and url in judge.last_stats["first_error"]


def test_rubric_judge_over_any_failing_generator_counts_failures():
    from cada.judges.rubric import RubricJudge

    class Broken:
        name = "broken"

        def generate(self, prompts, params=SamplingParams()):
            raise RuntimeError("boom")

    judge = RubricJudge(Broken())
    results = judge.judge(["a", "b"], ["x", "y"])
    assert [r.error for r in results] == ["judge failed: RuntimeError: boom"] * 2
    assert judge.last_stats["failed"] == 2


# -- 12: a hub model with no network --------------------------------------------------------------

def test_an_unreachable_hub_fails_within_seconds_with_one_line(tmp_path):
    exe = Path(sys.executable).parent / "cada"
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
           "HF_HOME": str(tmp_path / "hf"), "NO_COLOR": "1", "COLUMNS": "400"}
    env.pop("TRANSFORMERS_OFFLINE", None)
    t0 = time.perf_counter()
    try:
        res = subprocess.run([str(exe), "reason", "hi", "--mode", "none", "--model", "nosuchorg/nosuchmodel"],
                             capture_output=True, text=True, env=env, timeout=40, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("an unreachable hub took over 40 s to report")
    seconds = time.perf_counter() - t0
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode != 0 and seconds < 30, (seconds, lines)
    assert len(lines) == 1, lines  # one line: no retry warnings, no traceback
    assert "cannot be reached" in lines[0] and env["HF_ENDPOINT"] in lines[0] and "nosuchorg/nosuchmodel" in lines[0]


def test_offline_mode_gives_an_immediate_clear_error(monkeypatch):
    from cada.models.load import hub_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_source.cache_clear()
    t0 = time.perf_counter()
    with pytest.raises(CadaError) as e:
        make_generator("nosuchorg/nosuchmodel", backend="local", show_progress=False)
    assert time.perf_counter() - t0 < 3
    assert "HF_HUB_OFFLINE=1" in str(e.value) and "not in the local Hugging Face cache" in str(e.value)
    hub_source.cache_clear()


def test_a_model_the_hub_does_not_have_is_named(fake_server, monkeypatch):
    from huggingface_hub import constants

    from cada.models.load import hub_source, load_model, resolve_model

    hub = fake_server.base_url.removesuffix("/v1")
    fake_server.reply("error", status=404)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub)
    hub_source.cache_clear()
    try:
        assert resolve_model("nosuchorg/nosuchmodel") == "nosuchorg/nosuchmodel"  # passed through, not checked
        t0 = time.perf_counter()
        with pytest.raises(CadaError) as e:
            load_model("nosuchorg/nosuchmodel")
        assert time.perf_counter() - t0 < 5
        assert "no model 'nosuchorg/nosuchmodel'" in str(e.value) and hub in str(e.value)
    finally:
        hub_source.cache_clear()


# -- 13: a prompt longer than the model's context -------------------------------------------------

LONG = [{"role": "user", "content": "word " * 20_000}]  # 100,000 characters


@pytest.fixture
def fresh_tiny(tiny_generator):
    """A LocalGenerator of its own over the session's tiny model (its settings can change freely)."""
    from cada.models import LocalGenerator

    return LocalGenerator(tiny_generator.model, tiny_generator.tokenizer, show_progress=False, batch_size=4)


def test_too_long_names_the_prompts_over_the_context(fresh_tiny):
    assert fresh_tiny.context_length == 8192  # the tiny model's max_position_embeddings (its tokenizer says 1e30)
    assert fresh_tiny.too_long([CHAT, LONG, CHAT], 16) == [1]
    assert fresh_tiny.too_long([CHAT], 8190) == [0]  # the new tokens count too
    fresh_tiny.context_length = 32
    assert fresh_tiny.too_long([CHAT], 4) == [0]


def test_a_100k_character_prompt_is_cut_with_one_warning(fresh_tiny, caplog):
    caplog.set_level(logging.WARNING, logger="cada.models.local")
    original = fresh_tiny._token_ids([LONG])[0]
    assert len(original) > 8192
    t0 = time.perf_counter()
    out = fresh_tiny.generate([CHAT, LONG, LONG], SamplingParams(max_new_tokens=4))
    assert time.perf_counter() - t0 < 30
    assert len(out) == 3 and all(len(o) == 1 for o in out)
    warnings = [r.getMessage() for r in caplog.records if r.name == "cada.models.local"]
    assert len(warnings) == 1, warnings  # one for the call, naming every prompt cut
    assert f"1 ({len(original)} tokens), 2 ({len(original)} tokens)" in warnings[0], warnings
    assert "8192" in warnings[0] and "8188" in warnings[0]
    assert fresh_tiny.last_stats["truncated"] == [1, 2]
    ids = fresh_tiny._token_ids([LONG])
    fresh_tiny._fit_context(ids, 256)
    assert len(ids[0]) == 8192 - 256
    assert ids[0][:100] == original[:100] and ids[0][-100:] == original[-100:]  # its start and its end kept


def test_max_new_tokens_that_leave_no_room_is_an_error(fresh_tiny):
    fresh_tiny.context_length = 64
    with pytest.raises(CadaError, match="max_new_tokens=60"):
        fresh_tiny.generate([LONG], SamplingParams(max_new_tokens=60))


# -- stop strings: sent to the server, and honoured here when a server ignores them --------------------------------

def test_stop_strings_go_to_the_server_and_cut_what_it_ignores(fake_server):
    from cada.models.generate import SamplingParams

    fake_server.reply("ok", text='{"prompt": "a story"} and then more')  # a server that ignores `stop`
    gen = _gen(fake_server)
    assert gen.generate([CHAT], SamplingParams(stop=("}",))) == [['{"prompt": "a story"']]
    assert fake_server.requests[-1]["stop"] == ["}"]
    assert gen.generate([CHAT]) == [['{"prompt": "a story"} and then more']]
    assert "stop" not in fake_server.requests[-1]
    assert gen.can_continue is False  # a prefill is not sent to a server: callers ask plainly
