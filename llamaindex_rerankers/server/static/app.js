// The chat page: POST /v1/chat and read its AI SDK UI message stream (server-sent events).
// No build step and no dependencies; server data is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const sessionId = (crypto.randomUUID && crypto.randomUUID()) ||
  Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("llamaindex-rerankers-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("llamaindex-rerankers-key", keyInput.value));
$("key-form").addEventListener("submit", (e) => e.preventDefault());

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined && text !== null) el.textContent = text;
  return el;
}

function addMessage(role, text) {
  const el = element("div", `message ${role}`, text);
  $("messages").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function score(value) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(3);
}

function showSources(event) {
  const list = $("sources");
  list.replaceChildren();
  const status = $("status");
  status.hidden = event.status === "answered";
  const suspected = event.sources.filter((s) => s.rerank_injection_suspected);
  if (event.status === "abstained" && suspected.length && suspected.length === event.sources.length) {
    status.textContent = "Every source found was flagged as a possible prompt injection, so no answer was written from them.";
  } else if (event.status === "abstained") {
    status.textContent = "Nothing relevant was found: no source reached the relevance threshold, so no answer was invented.";
  } else if (event.status === "reranker_failed") {
    status.textContent = "The reranker could not judge the sources (its LLM did not answer). This is an outage, not 'nothing relevant'.";
  }
  for (const source of event.sources) {
    const item = element("li", "source");
    item.dataset.id = source.id;
    item.appendChild(element("div", "title", source.title));
    const meta = element("div", "meta");
    if (source.rerank_label) {
      const cls = "badge label label-" + source.rerank_label.replace(/\s+/g, "-");
      meta.appendChild(element("span", cls, source.rerank_label));
    }
    if (source.rerank_injection_suspected) {
      const flag = element("span", "badge suspected", "suspected injection");
      flag.title = "Instructions aimed at an AI were found in this source ("
        + source.rerank_injection_signals.join(", ") + "); the answer does not use it.";
      meta.appendChild(flag);
    }
    meta.appendChild(element("span", "badge score", `score ${score(source.rerank_score)}`));
    meta.appendChild(element("span", "badge retrieval-rank",
      `retrieval #${source.retrieval_rank} (${score(source.retrieval_score)})`));
    item.appendChild(meta);
    item.appendChild(element("p", "snippet", source.snippet));
    list.appendChild(item);
  }
}

function showReport(event) {
  const r = event.report;
  const t = event.timings;
  const parts = [`${r.n_candidates} candidates, ${r.n_judged} judged, ${r.n_unjudged} unjudged`];
  if (r.llm) parts.push(`${r.llm.calls} LLM calls, ${r.llm.cache_hits} cache hits`);
  parts.push(`retrieve ${t.retrieve_s.toFixed(2)} s`, `rerank ${t.rerank_s.toFixed(2)} s`);
  if (t.answer_s !== null) parts.push(`answer ${t.answer_s.toFixed(2)} s`);
  $("report").textContent = parts.join(" · ");
}

async function* streamParts(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function ask(question) {
  const headers = { "Content-Type": "application/json" };
  if (keyInput.value) headers.Authorization = `Bearer ${keyInput.value}`;
  const response = await fetch("/v1/chat", {
    method: "POST",
    headers,
    body: JSON.stringify({ messages: [{ role: "user", content: question }], session_id: sessionId, stream: true }),
  });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).message || message; } catch (e) { /* not JSON */ }
    if (response.status === 401) $("key-box").open = true;
    throw new Error(message);
  }
  const answer = addMessage("assistant", "");
  answer.classList.add("streaming");
  for await (const part of streamParts(response)) {
    switch (part.type) {
      case "data-sources":
        showSources(part.data);
        answer.classList.add(part.data.status);
        break;
      case "text-delta":
        answer.textContent += part.delta;
        break;
      case "error":
        throw new Error(part.errorText);
      case "data-report":
        showReport(part.data);
        break;
      default:
        break;
    }
  }
  answer.classList.remove("streaming");
  answer.classList.add("done");
}

$("ask-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("error").hidden = true;
  $("ask").disabled = true;
  addMessage("user", question);
  $("question").value = "";
  try {
    await ask(question);
  } catch (err) {
    $("error").textContent = err.message;
    $("error").hidden = false;
  } finally {
    $("ask").disabled = false;
  }
});

$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("ask-form").requestSubmit();
  }
});
