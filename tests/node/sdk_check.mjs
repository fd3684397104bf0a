// The official OpenAI Node SDK against a running sluicegate.
//
// Usage: node sdk_check.mjs BASE_URL FULL_KEY LIMITED_KEY THROTTLED_KEY
//
// `test-model` streams "The quick brown fox jumps " (5 tokens); `slow-model` streams 400 tokens
// 10 ms apart; `other-model` drops mid-stream and is the only model LIMITED_KEY may use;
// THROTTLED_KEY may send one request a minute. `responses-model` is two mock backends, each
// keeping its own stored responses; `dropping-responses` drops its Responses stream mid-way;
// `translated-model` serves only chat completions, so the gateway translates the Responses API;
// `claude-model` is an Anthropic-shaped backend answering with a recorded Messages stream that
// calls a tool.
// Exits non-zero on the first failed check.

import assert from "node:assert/strict";
import OpenAI from "openai";

const [base, fullKey, limitedKey, throttledKey] = process.argv.slice(2);
const messages = [{ role: "user", content: "hello" }];
const sdk = (apiKey) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 });
const client = sdk(fullKey);
const TEXT = "The quick brown fox jumps ";

async function expectError(kind, params, apiKey = fullKey) {
  try {
    await sdk(apiKey).chat.completions.create(params);
  } catch (error) {
    assert.ok(error instanceof kind, `expected ${kind.name}, got ${error?.constructor?.name}: ${error}`);
    assert.ok(error.error, "the error carries the OpenAI body");
    return error;
  }
  assert.fail(`expected ${kind.name}`);
}

// Streaming, with the usage chunk asked for.
const chunks = [];
const stream = await client.chat.completions.create({
  model: "test-model",
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) chunks.push(chunk);
assert.equal(chunks.map((c) => c.choices[0]?.delta?.content ?? "").join(""), TEXT);
assert.ok(chunks.every((c) => c.model === "test-model"));
assert.equal(chunks.at(-1).usage?.completion_tokens, 5, JSON.stringify(chunks.at(-1)));

// Without usage asked for, no chunk carries it.
const plain = [];
for await (const chunk of await client.chat.completions.create({ model: "test-model", messages, stream: true })) {
  plain.push(chunk);
}
assert.ok(plain.every((c) => !c.usage), "no usage chunk");

// The .stream() helper assembles the final completion.
const helper = client.chat.completions.stream({ model: "test-model", messages });
let deltas = "";
helper.on("content", (delta) => (deltas += delta));
const final = await helper.finalChatCompletion();
assert.equal(final.choices[0].message.content, TEXT);
assert.equal(deltas, TEXT);
assert.equal(final.model, "test-model");

// Aborting mid-stream ends the iteration at once, without an error escaping.
const started = Date.now();
const long = await client.chat.completions.create({ model: "slow-model", messages, stream: true });
let seen = 0;
for await (const chunk of long) {
  if (chunk.choices[0]?.delta?.content && ++seen === 3) long.controller.abort();
}
assert.equal(seen, 3);
assert.ok(Date.now() - started < 3000, "abort ends the stream promptly");

// Non-streaming.
const completion = await client.chat.completions.create({ model: "test-model", messages });
assert.equal(completion.choices[0].message.content, TEXT);
assert.equal(completion.usage.completion_tokens, 5);

// Errors map to the SDK's classes.
await expectError(OpenAI.AuthenticationError, { model: "test-model", messages }, "sk-wrong");
await expectError(OpenAI.NotFoundError, { model: "no-such-model", messages });
const bad = await expectError(OpenAI.BadRequestError, { model: "test-model", messages: [] });
assert.equal(bad.param, "messages");
const wrongType = await expectError(OpenAI.BadRequestError, { model: "test-model", messages, temperature: "hot" });
assert.equal(wrongType.param, "temperature");
await expectError(OpenAI.PermissionDeniedError, { model: "test-model", messages }, limitedKey);

// A stream that fails after it started makes the iterator throw.
try {
  for await (const _ of await sdk(limitedKey).chat.completions.create({ model: "other-model", messages, stream: true })) {
    // reading until it fails
  }
  assert.fail("a dropped stream must throw");
} catch (error) {
  assert.ok(error instanceof OpenAI.APIError, `an APIError, got ${error}`);
  assert.match(String(error.message), /closed before the response was complete/);
}

// The second request of a key allowed one a minute is a RateLimitError with OpenAI's headers.
const throttled = sdk(throttledKey);
await throttled.chat.completions.create({ model: "test-model", messages });
const limited = await expectError(OpenAI.RateLimitError, { model: "test-model", messages }, throttledKey);
assert.equal(limited.headers.get("x-ratelimit-limit-requests"), "1");
assert.equal(limited.code, "rate_limit_exceeded");

// Embeddings (test-model's mock serves them; the SDK asks for base64 and decodes it).
const embedded = await client.embeddings.create({ model: "test-model", input: ["hello world", "hello world", "other"] });
assert.equal(embedded.model, "test-model");
const vectors = embedded.data.map((item) => item.embedding);
assert.deepEqual(vectors.map((v) => v.length), [64, 64, 64]);
assert.deepEqual(vectors[0], vectors[1]);
assert.notDeepEqual(vectors[0], vectors[2]);
assert.equal(embedded.usage.prompt_tokens, 5);
try {
  await client.embeddings.create({ model: "other-model", input: "x" });
  assert.fail("other-model serves chat only");
} catch (error) {
  assert.ok(error instanceof OpenAI.NotFoundError, `a NotFoundError, got ${error}`);
  assert.equal(error.code, "model_not_found");
}

// Legacy completions, whole and streamed.
const legacy = await client.completions.create({ model: "test-model", prompt: "Once upon a time", max_tokens: 5 });
assert.equal(legacy.model, "test-model");
assert.equal(legacy.choices[0].text, "The quick brown fox jumps ");
let legacyText = "";
for await (const piece of await client.completions.create({ model: "test-model", prompt: "Once", max_tokens: 3, stream: true })) {
  legacyText += piece.choices[0]?.text ?? "";
}
assert.equal(legacyText, "The quick brown ");

// The Responses API: typed events streamed, the final response assembled by the SDK.
const events = [];
for await (const event of await client.responses.create({ model: "test-model", input: "hello", stream: true })) {
  events.push(event);
}
assert.equal(events[0].type, "response.created");
assert.equal(events.at(-1).type, "response.completed");
assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
assert.equal(events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join(""), TEXT);
assert.equal(events.at(-1).response.model, "test-model");
assert.equal(events.at(-1).response.usage.output_tokens, 5);
const finalResponse = await client.responses.stream({ model: "test-model", input: "hello" }).finalResponse();
assert.equal(finalResponse.output_text, TEXT);
const whole = await client.responses.create({ model: "test-model", input: "hello", max_output_tokens: 3 });
assert.equal(whole.output_text, "The quick brown ");
assert.equal(whole.model, "test-model");

// The same through a backend that serves only chat completions, translated by the gateway.
const translated = await client.responses
  .stream({ model: "translated-model", input: "hello", instructions: "be brief" })
  .finalResponse();
assert.equal(translated.output_text, TEXT);
assert.equal(translated.model, "translated-model");
assert.equal(translated.usage.output_tokens, 5);
assert.equal((await client.responses.create({ model: "translated-model", input: "hello" })).output_text, TEXT);

// A stored response is read back, and its follow-ups land on the backend that stored it.
const { data: first, response: made } = await client.responses
  .create({ model: "responses-model", input: "remember 7" })
  .withResponse();
const home = made.headers.get("x-sluicegate-backend");
assert.equal((await client.responses.retrieve(first.id)).output_text, first.output_text);
const asked = [];
for await (const item of client.responses.inputItems.list(first.id)) asked.push(item);
assert.equal(asked[0].role, "user");
assert.equal(asked[0].content[0].text, "remember 7");
let previous = first.id;
for (let turn = 0; turn < 4; turn++) {
  const { data, response } = await client.responses
    .create({ model: "responses-model", input: `turn ${turn}`, previous_response_id: previous })
    .withResponse();
  assert.equal(response.headers.get("x-sluicegate-backend"), home);
  previous = data.id;
}
await client.responses.delete(first.id);
try {
  await client.responses.retrieve(first.id);
  assert.fail("a deleted response is gone");
} catch (error) {
  assert.ok(error instanceof OpenAI.NotFoundError, `a NotFoundError, got ${error}`);
}

// A Responses stream that fails after it started throws instead of ending quietly.
try {
  for await (const _ of await client.responses.create({ model: "dropping-responses", input: "x", stream: true })) {
    // drained
  }
  assert.fail("a dropped Responses stream must throw");
} catch (error) {
  assert.ok(error instanceof OpenAI.APIError, `an APIError, got ${error}`);
  assert.match(String(error.message), /closed before the response was complete/);
}

// Claude behind the same endpoint: the SDK's stream helper assembles the translated tool call.
const weather = [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }];
const claude = await client.chat.completions
  .stream({ model: "claude-model", messages, tools: weather })
  .finalChatCompletion();
const said = claude.choices[0].message;
assert.equal(said.content, "Let me check the weather in Paris.");
assert.equal(said.tool_calls[0].function.name, "get_weather");
assert.deepEqual(JSON.parse(said.tool_calls[0].function.arguments), { city: "Paris", unit: "celsius" });
assert.equal(claude.choices[0].finish_reason, "tool_calls");

console.log("node sdk ok");
