// The Vercel AI SDK's own chat client (AbstractChat, the class behind React's useChat, with
// DefaultChatTransport) talking to serve's /v1/chat. tests/server/test_ai_sdk.py runs it:
//
//   node chat.mjs <base-url> <question> [<question> ...]
//
// Each question is one turn of the same chat (the SDK sends the whole conversation, as
// useChat does). It prints one JSON line: per turn the chat's status and error after the turn,
// the seconds from sendMessage to onFinish, onFinish's flags, and the assistant message's parts
// as the SDK assembled them. An API key comes from $SERVE_API_KEY.
import { AbstractChat, DefaultChatTransport } from "ai";

class State {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(message) {
    this.messages = this.messages.concat(message);
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }
  snapshot(thing) {
    return structuredClone(thing);
  }
}

class Chat extends AbstractChat {
  constructor(init) {
    const state = new State();
    super({ ...init, state });
    this.chatState = state;
  }
}

const [url, ...questions] = process.argv.slice(2);
const headers = process.env.SERVE_API_KEY
  ? { Authorization: `Bearer ${process.env.SERVE_API_KEY}` }
  : {};
let finished;
const chat = new Chat({
  transport: new DefaultChatTransport({ api: `${url}/v1/chat`, headers }),
  onFinish: (event) => {
    finished = event;
  },
  // The SDK calls onError and sets status "error"; the test reads both.
  onError: () => {},
});

const turns = [];
for (const question of questions) {
  finished = undefined;
  const started = performance.now();
  await chat.sendMessage({ text: question });
  const seconds = (performance.now() - started) / 1000;
  const last = chat.messages[chat.messages.length - 1];
  turns.push({
    seconds,
    status: chat.status,
    error: chat.error ? chat.error.message : null,
    finished: finished
      ? { isError: finished.isError, isAbort: finished.isAbort, finishReason: finished.finishReason ?? null }
      : null,
    role: last.role,
    parts: last.role === "assistant" ? last.parts : [],
  });
  if (chat.status === "error") break;
}
process.stdout.write(JSON.stringify({ turns, messages: chat.messages.length }) + "\n");
