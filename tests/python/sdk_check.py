"""The official OpenAI Python SDK against a running sluicegate.

Usage: sdk_check.py BASE_URL FULL_KEY LIMITED_KEY THROTTLED_KEY

`test-model` streams "The quick brown fox jumps " (5 tokens); `other-model` drops mid-stream
and is the only model LIMITED_KEY may use; THROTTLED_KEY may send one request a minute.
`responses-model` is two mock backends, each keeping its own stored responses;
`dropping-responses` drops its Responses stream mid-way; `translated-model` serves only chat
completions, so the gateway translates the Responses API for it; `claude-model` is an
Anthropic-shaped backend answering with a recorded Messages stream that calls a tool.
Exits non-zero on the first failed check.
"""

import json
import sys

import openai

base, full_key, limited_key, throttled_key = sys.argv[1:5]
messages = [{"role": "user", "content": "hello"}]
client = openai.OpenAI(base_url=f"{base}/v1", api_key=full_key, max_retries=0)


def expect_error(kind, **kwargs):
    key = kwargs.pop("key", full_key)
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    try:
        sdk.chat.completions.create(**kwargs)
    except kind as error:
        assert error.body is not None, "error carries the OpenAI body"
        return error
    raise AssertionError(f"expected {kind.__name__}")


# Streaming, with the usage chunk asked for.
chunks = list(
    client.chat.completions.create(
        model="test-model", messages=messages, stream=True, stream_options={"include_usage": True}
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == "The quick brown fox jumps ", text
assert all(c.model == "test-model" for c in chunks)
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5, chunks[-1]

# Streaming without usage: no usage chunk.
chunks = list(client.chat.completions.create(model="test-model", messages=messages, stream=True))
assert all(c.usage is None for c in chunks)

# Non-streaming.
completion = client.chat.completions.create(model="test-model", messages=messages)
assert completion.choices[0].message.content == "The quick brown fox jumps ", completion
assert completion.model == "test-model"
assert completion.usage.completion_tokens == 5

# Models.
assert [m.id for m in client.models.list()] == [
    "test-model",
    "other-model",
    "slow-model",
    "responses-model",
    "dropping-responses",
    "translated-model",
    "claude-model",
]

# Errors map to the SDK's exception classes.
expect_error(openai.AuthenticationError, key="sk-wrong", model="test-model", messages=messages)
expect_error(openai.NotFoundError, model="no-such-model", messages=messages)
bad = expect_error(openai.BadRequestError, model="test-model", messages=[])
assert bad.param == "messages", bad.param
expect_error(openai.PermissionDeniedError, key=limited_key, model="test-model", messages=messages)

# A stream that fails after it started raises instead of ending quietly.
limited = openai.OpenAI(base_url=f"{base}/v1", api_key=limited_key, max_retries=0)
try:
    for _ in limited.chat.completions.create(model="other-model", messages=messages, stream=True):
        pass
except openai.APIError as error:
    assert "closed before the response was complete" in str(error), error
else:
    raise AssertionError("a dropped stream must raise")

# The second request of a key allowed one a minute is a RateLimitError, with OpenAI's headers.
throttled = openai.OpenAI(base_url=f"{base}/v1", api_key=throttled_key, max_retries=0)
throttled.chat.completions.create(model="test-model", messages=messages)
try:
    throttled.chat.completions.create(model="test-model", messages=messages)
except openai.RateLimitError as error:
    assert error.response.headers["x-ratelimit-limit-requests"] == "1", error.response.headers
    assert error.code == "rate_limit_exceeded", error.code
else:
    raise AssertionError("the second request must be rate limited")

# Embeddings (test-model's mock serves them; the SDK asks for base64 and decodes it).
embedded = client.embeddings.create(model="test-model", input=["hello world", "hello world", "other"])
assert embedded.model == "test-model", embedded.model
vectors = [item.embedding for item in embedded.data]
assert [len(v) for v in vectors] == [64, 64, 64], [len(v) for v in vectors]
assert vectors[0] == vectors[1] and vectors[0] != vectors[2], "deterministic per input"
assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-3, "unit vectors"
assert embedded.usage.prompt_tokens == 5, embedded.usage
floats = client.embeddings.create(model="test-model", input="hello world", encoding_format="float", dimensions=8)
assert len(floats.data[0].embedding) == 8
try:
    client.embeddings.create(model="other-model", input="x")
except openai.NotFoundError as error:
    assert error.code == "model_not_found", error.code
else:
    raise AssertionError("other-model serves chat only")

# Legacy completions, whole and streamed.
legacy = client.completions.create(model="test-model", prompt="Once upon a time", max_tokens=5)
assert legacy.model == "test-model" and legacy.choices[0].text == "The quick brown fox jumps ", legacy
assert legacy.usage.completion_tokens == 5
pieces = list(
    client.completions.create(
        model="test-model", prompt="Once", max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
)
assert "".join(p.choices[0].text for p in pieces if p.choices) == "The quick brown ", pieces
assert pieces[-1].usage is not None and pieces[-1].usage.completion_tokens == 3, pieces[-1]

# The Responses API: typed events streamed, the final response assembled by the SDK.
events = list(client.responses.create(model="test-model", input="hello", stream=True))
types = [e.type for e in events]
assert types[0] == "response.created" and types[-1] == "response.completed", types
assert [e.sequence_number for e in events] == list(range(len(events))), events
assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "The quick brown fox jumps "
assert events[-1].response.model == "test-model", events[-1].response.model
assert events[-1].response.usage.output_tokens == 5, events[-1].response.usage
with client.responses.stream(model="test-model", input="hello") as stream:
    for _ in stream:
        pass
    final = stream.get_final_response()
assert final.output_text == "The quick brown fox jumps ", final.output_text
whole = client.responses.create(model="test-model", input="hello", max_output_tokens=3)
assert whole.output_text == "The quick brown ", whole.output_text
assert whole.model == "test-model" and whole.usage.output_tokens == 3, whole

# The same through a backend that serves only chat completions, translated by the gateway.
with client.responses.stream(model="translated-model", input="hello", instructions="be brief") as stream:
    deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    translated = stream.get_final_response()
assert "".join(deltas) == "The quick brown fox jumps ", deltas
assert translated.output_text == "The quick brown fox jumps " and translated.model == "translated-model"
assert translated.usage.output_tokens == 5, translated.usage
assert client.responses.create(model="translated-model", input="hello").output_text == "The quick brown fox jumps "

# A stored response is read back, and its follow-ups land on the backend that stored it.
raw = client.responses.with_raw_response.create(model="responses-model", input="remember 7")
home = raw.headers["x-sluicegate-backend"]
first = raw.parse()
assert client.responses.retrieve(first.id).output_text == first.output_text
asked = list(client.responses.input_items.list(first.id))
assert asked[0].role == "user" and asked[0].content[0].text == "remember 7", asked
previous = first.id
for turn in range(4):
    raw = client.responses.with_raw_response.create(
        model="responses-model", input=f"turn {turn}", previous_response_id=previous
    )
    assert raw.headers["x-sluicegate-backend"] == home, (turn, raw.headers["x-sluicegate-backend"], home)
    previous = raw.parse().id
client.responses.delete(first.id)
try:
    client.responses.retrieve(first.id)
except openai.NotFoundError:
    pass
else:
    raise AssertionError("a deleted response is gone")

# A Responses stream that fails after it started raises instead of ending quietly.
try:
    for _ in client.responses.create(model="dropping-responses", input="x", stream=True):
        pass
except openai.APIError as error:
    assert "closed before the response was complete" in str(error), error
else:
    raise AssertionError("a dropped Responses stream must raise")

# Claude behind the same endpoint: Anthropic's Messages stream, translated, as the SDK reads it.
weather = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
said, name, arguments = "", None, ""
for chunk in client.chat.completions.create(model="claude-model", messages=messages, tools=weather, stream=True):
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    said += delta.content or ""
    for call in delta.tool_calls or []:
        name = call.function.name or name
        arguments += call.function.arguments or ""
assert said == "Let me check the weather in Paris.", said
assert name == "get_weather" and json.loads(arguments) == {"city": "Paris", "unit": "celsius"}, arguments

print("sdk ok")
