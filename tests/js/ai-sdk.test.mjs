// The AI SDK's own client against a chatstream server: the chat logic behind React's `useChat`
// (`AbstractChat`, with an in-memory state instead of React's) and its `DefaultChatTransport`,
// with default settings apart from the server's address.
//
//   node ai-sdk.test.mjs http://127.0.0.1:PORT
//
// `cargo test --test server` starts the server with the scripted replies these tests expect
// (tests/server/ai_sdk.rs) and runs this file.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { AbstractChat, DefaultChatTransport, validateUIMessages } from 'ai';

const base = process.argv[2] ?? process.env.CHATSTREAM_URL;
if (!base) {
  console.error('usage: node ai-sdk.test.mjs BASE_URL');
  process.exit(2);
}
const api = `${base}/api/chat`;

/** What `useChat` keeps in React state, kept in memory. */
class MemoryState {
  status = 'ready';
  error = undefined;
  constructor(messages = []) {
    this.messages = messages;
  }
  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = [
      ...this.messages.slice(0, index),
      this.snapshot(message),
      ...this.messages.slice(index + 1),
    ];
  };
  snapshot = (thing) => structuredClone(thing);
}

class Chat extends AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new MemoryState(messages) });
  }
}

/** A chat as `useChat({ id, messages })` makes it, recording errors and finishes. */
function chat(id, messages) {
  const errors = [];
  const finishes = [];
  const c = new Chat({
    id,
    messages,
    transport: new DefaultChatTransport({ api }),
    onError: (e) => errors.push(e),
    onFinish: (f) => finishes.push(f),
  });
  return { chat: c, errors, finishes };
}

async function until(what, condition, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function history(id) {
  const response = await fetch(`${api}/${id}/messages`);
  assert.equal(response.status, 200);
  const messages = await response.json();
  if (messages.length > 0) await validateUIMessages({ messages });
  return messages;
}

const textOf = (message) =>
  message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');

/** What both sides must agree on, without the client's bookkeeping fields. */
const essentials = (messages) =>
  messages.map((m) => ({
    id: m.id,
    role: m.role,
    metadata: m.metadata,
    parts: m.parts.map(({ type, text, state, toolCallId, input, output }) =>
      JSON.parse(JSON.stringify({ type, text, state, toolCallId, input, output })),
    ),
  }));

const words = (n, from = 0) =>
  Array.from({ length: n }, (_, i) => `w${i + from} `).join('');

test('a reply is assembled into one UIMessage: reasoning, text, tool call, finish reason, usage', async () => {
  const { chat: c, errors, finishes } = chat('js-weather');
  await c.sendMessage({ text: 'weather in Paris?' });
  assert.deepEqual(errors, []);
  assert.equal(c.status, 'ready');
  assert.equal(c.messages.length, 2);
  const [user, reply] = c.messages;
  assert.equal(user.role, 'user');
  assert.equal(reply.role, 'assistant');
  assert.deepEqual(
    reply.parts.map((p) => p.type),
    ['step-start', 'reasoning', 'text', 'tool-get_weather'],
  );
  assert.equal(reply.parts[1].text, 'The user asks about the weather.');
  assert.equal(reply.parts[2].text, 'Let me check.');
  assert.equal(reply.parts[2].state, 'done');
  const tool = reply.parts[3];
  assert.equal(tool.toolCallId, 'call_1');
  assert.equal(tool.state, 'input-available');
  assert.deepEqual(tool.input, { city: 'Paris' });
  assert.deepEqual(reply.metadata, {
    status: 'complete',
    usage: { inputTokens: 9, outputTokens: 4 },
    finishReason: 'tool-calls',
  });
  assert.equal(finishes.length, 1);
  assert.equal(finishes[0].finishReason, 'tool-calls');
  assert.equal(finishes[0].isAbort, false);
  assert.equal(finishes[0].isError, false);

  // A reload gets the same messages from the server, in the SDK's own UIMessage schema.
  assert.deepEqual(essentials(await history('js-weather')), essentials(c.messages));
});

test('a reply the client stopped reading goes on, and resumes with every token once', async () => {
  const { chat: c, errors } = chat('js-resume');
  const sent = c.sendMessage({ text: 'long story' });
  await until('the first words', () => c.messages.length === 2 && textOf(c.messages[1]).length > 0);
  await c.stop(); // aborts the fetch only
  await sent;
  const partial = c.messages[1];
  assert.ok(textOf(partial).length < words(60).length, 'the reply was still going');

  // The same page resumes: the replay replaces the message it shows.
  await c.resumeStream();
  assert.deepEqual(errors, []);
  assert.equal(c.messages.length, 2);
  assert.equal(c.messages[1].id, partial.id);
  assert.equal(textOf(c.messages[1]), words(60));
  assert.equal(c.messages[1].metadata.status, 'complete');

  // Nothing live any more: 204, and the client leaves its messages alone.
  await c.resumeStream();
  assert.equal(c.messages.length, 2);
  assert.equal(textOf(c.messages[1]), words(60));
});

test('a reloaded page resumes the live reply from the history it loaded', async () => {
  const first = chat('js-reload');
  const sent = first.chat.sendMessage({ text: 'long story, again' });
  await until('the first words', () => first.chat.messages.length === 2 && textOf(first.chat.messages[1]).length > 0);
  await first.chat.stop();
  await sent;
  const replyId = first.chat.messages[1].id;

  // The new page: the history (with the reply as far as it was saved), then resume on mount.
  const loaded = await history('js-reload');
  assert.equal(loaded.length, 2);
  assert.equal(loaded[1].id, replyId);
  const { chat: reloaded, errors } = chat('js-reload', loaded);
  await reloaded.resumeStream();
  assert.deepEqual(errors, []);
  assert.equal(reloaded.messages.length, 2, 'the resumed reply replaced the loaded one');
  assert.equal(reloaded.messages[1].id, replyId);
  assert.equal(textOf(reloaded.messages[1]), words(60));
  assert.equal(reloaded.messages[1].metadata.status, 'complete');
  assert.deepEqual(essentials(await history('js-reload')), essentials(reloaded.messages));
});

test('regenerate replaces the last reply', async () => {
  const { chat: c, errors } = chat('js-joke');
  await c.sendMessage({ text: 'joke please' });
  const first = c.messages[1];
  assert.equal(textOf(first), 'first joke');
  await c.regenerate();
  assert.deepEqual(errors, []);
  assert.equal(c.messages.length, 2);
  assert.notEqual(c.messages[1].id, first.id);
  assert.equal(textOf(c.messages[1]), 'second joke');
  const stored = await history('js-joke');
  assert.deepEqual(essentials(stored), essentials(c.messages));
});

test('the stop route stops the reply: partial reply saved cancelled, nothing left to resume', async () => {
  const { chat: c, errors, finishes } = chat('js-stop');
  const sent = c.sendMessage({ text: 'stop me' });
  await until('the first words', () => c.messages.length === 2 && textOf(c.messages[1]).length > 0);
  const response = await fetch(`${api}/js-stop/stop`, { method: 'POST' });
  assert.deepEqual(await response.json(), { stopped: true });
  await sent;
  assert.deepEqual(errors, []);
  assert.equal(c.status, 'ready');
  const reply = c.messages[1];
  assert.ok(textOf(reply).length < words(200).length);
  assert.equal(reply.metadata.status, 'cancelled');
  assert.equal(finishes.length, 1);

  const stored = await history('js-stop');
  assert.equal(stored[1].metadata.status, 'cancelled');
  assert.equal(textOf(stored[1]), textOf(reply), 'the client saw exactly what was saved');
  const transport = new DefaultChatTransport({ api });
  assert.equal(await transport.reconnectToStream({ chatId: 'js-stop' }), null);
});
