// The lmforge playground: plain JavaScript, no framework and no build step. It calls the server's own OpenAI-style
// routes (streamed completions and chat completions as server-sent events) and /v1/attention, /v1/classify and
// /v1/attributions, and draws what they return.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null; // GET /playground/info: model name, family, task, labels, layers, heads
let chat = []; // the conversation so far, in chat mode
let running = null; // the AbortController of the generation in flight

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function post(path, body, signal) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      message = (await response.json()).error.message;
    } catch (e) {
      // not our error shape: keep the status line
    }
    throw new Error(message);
  }
  return response;
}

// A token as a reader should see it: spaces and newlines made visible.
function shown(token) {
  return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "→") || "∅";
}

function numberOrNull(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function sampling() {
  const body = { max_tokens: numberOrNull("max_tokens"), temperature: numberOrNull("temperature"), stream: true };
  const topP = numberOrNull("top_p");
  if (topP !== null && topP < 1) body.top_p = topP;
  const topK = numberOrNull("top_k");
  if (topK) body.top_k = topK;
  const seed = numberOrNull("seed");
  if (seed !== null) body.seed = seed;
  const stop = $("stop").value.split("\n").filter((s) => s !== "").map((s) => s.replace(/\\n/g, "\n"));
  if (stop.length) body.stop = stop;
  if (body.max_tokens === null) delete body.max_tokens;
  if (body.temperature === null) delete body.temperature;
  return body;
}

// Reads server-sent events from a fetch response as they arrive; calls onData with each parsed `data:` payload.
async function readEvents(response, onData) {
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
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

function chatMode() {
  return document.querySelector('input[name="mode"]:checked').value === "chat";
}

function renderChat(pending) {
  const log = $("chat-log");
  log.replaceChildren();
  for (const m of chat) {
    const div = document.createElement("div");
    div.className = "msg " + m.role;
    div.textContent = m.role + ": " + m.content;
    log.append(div);
  }
  log.hidden = chat.length === 0 && !pending;
}

async function generate() {
  const output = $("output");
  const prompt = $("prompt").value;
  const body = sampling();
  let path = "/v1/completions";
  if (chatMode()) {
    chat.push({ role: "user", content: prompt });
    body.messages = chat.slice();
    path = "/v1/chat/completions";
    renderChat(true);
  } else {
    body.prompt = prompt;
  }
  output.textContent = "";
  output.dataset.chunks = "0";
  output.dataset.done = "false";
  output.classList.remove("error");
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = chatMode() ? "" : prompt;
  const textSpan = document.createElement("span");
  textSpan.id = "generated";
  output.append(promptSpan, textSpan);
  running = new AbortController();
  $("generate").disabled = true;
  $("cancel").disabled = false;
  const start = performance.now();
  let finish = null;
  let chunks = 0;
  $("gen-status").textContent = "waiting for the first token…";
  try {
    const response = await post(path, body, running.signal);
    await readEvents(response, (chunk) => {
      const choice = chunk.choices[0];
      const text = chatMode() ? (choice.delta && choice.delta.content) || "" : choice.text || "";
      if (text) {
        textSpan.textContent += text;
        chunks += 1;
        output.dataset.chunks = String(chunks);
      }
      if (choice.finish_reason) finish = choice.finish_reason;
      const seconds = (performance.now() - start) / 1000;
      $("gen-status").textContent = `${chunks} chunks in ${seconds.toFixed(2)} s`;
    });
    if (chatMode()) chat.push({ role: "assistant", content: textSpan.textContent });
    const seconds = (performance.now() - start) / 1000;
    $("gen-status").textContent = `${chunks} chunks in ${seconds.toFixed(2)} s; finish: ${finish || "?"}`;
  } catch (e) {
    if (chatMode() && chat.length && chat[chat.length - 1].role === "user") chat.pop();
    $("gen-status").textContent = e.name === "AbortError" ? "stopped" : "";
    if (e.name !== "AbortError") {
      output.classList.add("error");
      output.textContent = e.message;
    }
  } finally {
    output.dataset.done = "true";
    running = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
    if (chatMode()) renderChat(false);
  }
}

// ---- attention ----

function fillSelect(select, n) {
  const previous = select.value;
  select.replaceChildren();
  for (let i = 0; i < n; i++) {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = String(i);
    select.append(option);
  }
  if (previous !== "" && Number(previous) < n) select.value = previous;
}

function attentionText() {
  const own = $("attention-text").value;
  if (own.trim()) return own;
  const promptBox = $("prompt");
  const generated = $("generated");
  if (info && info.classifies) return $("classify-text").value;
  if (info && !info.generates) return "";
  return (promptBox ? promptBox.value : "") + (generated && !chatMode() ? generated.textContent : "");
}

// White to dark blue for a weight in [0, 1], on a fixed scale; the square root lets weights of 1/T show.
function colour(w) {
  const t = Math.sqrt(Math.max(0, Math.min(1, w)));
  const r = Math.round(255 - t * (255 - 8));
  const g = Math.round(255 - t * (255 - 48));
  const b = Math.round(255 - t * (255 - 107));
  return `rgb(${r},${g},${b})`;
}

function drawHeatmap(result) {
  const canvas = $("heatmap");
  const tokens = result.tokens.map(shown);
  const n = tokens.length;
  const cell = Math.max(10, Math.min(36, Math.floor(480 / n)));
  const ctx = canvas.getContext("2d");
  ctx.font = "12px monospace";
  const label = Math.min(140, Math.ceil(Math.max(...tokens.map((t) => ctx.measureText(t).width))) + 8);
  canvas.width = label + n * cell + 1;
  canvas.height = label + n * cell + 1;
  ctx.font = "12px monospace";
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      ctx.fillStyle = colour(result.weights[i][j]);
      ctx.fillRect(label + j * cell, label + i * cell, cell, cell);
    }
  }
  ctx.strokeStyle = "#999";
  ctx.strokeRect(label + 0.5, label + 0.5, n * cell, n * cell);
  ctx.fillStyle = "#222";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let i = 0; i < n; i++) ctx.fillText(tokens[i], label - 4, label + i * cell + cell / 2, label - 6);
  for (let j = 0; j < n; j++) {
    ctx.save();
    ctx.translate(label + j * cell + cell / 2, label - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(tokens[j], 0, 0, label - 6);
    ctx.restore();
  }
  canvas.dataset.tokens = String(n);
  canvas.onmousemove = (event) => {
    const box = canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) * canvas.width) / box.width - label;
    const y = ((event.clientY - box.top) * canvas.height) / box.height - label;
    const i = Math.floor(y / cell);
    const j = Math.floor(x / cell);
    $("heatmap-hover").textContent =
      i >= 0 && j >= 0 && i < n && j < n
        ? `${tokens[i]} → ${tokens[j]}: ${result.weights[i][j].toFixed(4)}`
        : "";
  };
}

async function showAttention() {
  const status = $("attention-status");
  const text = attentionText();
  if (!text.trim()) {
    status.textContent = "type a text first";
    return;
  }
  status.textContent = "computing…";
  try {
    const body = { text, layer: Number($("layer").value || 0), head: Number($("head").value || 0) };
    const result = await (await post("/v1/attention", body)).json();
    fillSelect($("layer"), result.layers);
    fillSelect($("head"), result.heads);
    drawHeatmap(result);
    status.textContent = `layer ${result.layer}, head ${result.head}: ${result.tokens.length} tokens` +
      (result.causal ? " (causal: a token sees only itself and earlier ones)" : "");
  } catch (e) {
    status.textContent = e.message;
  }
}

function toggleAttention() {
  const body = $("attention-body");
  body.hidden = !body.hidden;
  $("attention-toggle").setAttribute("aria-expanded", String(!body.hidden));
  $("attention-toggle").textContent = body.hidden ? "Attention view ▸" : "Attention view ▾";
  if (!body.hidden) showAttention();
}

// ---- classify ----

async function classify() {
  const status = $("classify-status");
  status.textContent = "classifying…";
  try {
    const result = await (await post("/v1/classify", { input: $("classify-text").value })).json();
    const box = $("labels");
    box.replaceChildren();
    for (const { label, probability } of result.data[0].labels) {
      const row = document.createElement("div");
      row.className = "label-row";
      const name = document.createElement("span");
      name.className = "label-name";
      name.textContent = label;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = (probability * 100).toFixed(1) + "%";
      const value = document.createElement("span");
      value.textContent = probability.toFixed(3);
      row.append(name, bar, value);
      box.append(row);
    }
    status.textContent = "";
  } catch (e) {
    status.textContent = e.message;
  }
}

async function explain() {
  const status = $("classify-status");
  status.textContent = "integrating gradients…";
  try {
    const result = await (await post("/v1/attributions", { input: $("classify-text").value })).json();
    const box = $("attributions");
    box.replaceChildren();
    const top = Math.max(1e-9, ...result.attributions.map(Math.abs));
    result.tokens.forEach((token, i) => {
      const a = result.attributions[i];
      const span = document.createElement("span");
      span.className = "token";
      const alpha = (Math.abs(a) / top).toFixed(3);
      span.style.background = a >= 0 ? `rgba(214,39,40,${alpha})` : `rgba(31,119,180,${alpha})`;
      span.title = a.toFixed(4);
      span.textContent = shown(token);
      box.append(span);
    });
    status.textContent = `attributions to "${result.target}" (predicted "${result.label}"); red for, blue against`;
  } catch (e) {
    status.textContent = e.message;
  }
}

// ---- start ----

async function start() {
  try {
    info = await (await fetch("/playground/info")).json();
  } catch (e) {
    $("model-info").textContent = "the server did not answer: " + e.message;
    return;
  }
  const task = info.task ? `, fine-tuned for ${info.task}` : "";
  $("model-info").textContent = `${info.model}: ${info.family}${task}, ${info.layers} layers x ${info.heads} heads`;
  $("key-box").hidden = !info.auth;
  $("generate-panel").hidden = !info.generates;
  $("classify-panel").hidden = !info.classifies;
  if (info.classifies) $("attention-text").placeholder = "Text (default: the text to classify)";
  else if (!info.generates) $("attention-text").placeholder = "Text";
  fillSelect($("layer"), info.layers || 1);
  fillSelect($("head"), info.heads || 1);
  $("generate").onclick = generate;
  $("cancel").onclick = () => running && running.abort();
  $("classify").onclick = classify;
  $("explain").onclick = explain;
  $("attention-toggle").onclick = toggleAttention;
  $("attention-show").onclick = showAttention;
  $("layer").onchange = showAttention;
  $("head").onchange = showAttention;
  $("attention-from-output").onclick = () => {
    $("attention-text").value = "";
    showAttention();
  };
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.onchange = () => {
      chat = [];
      renderChat(false);
      $("prompt").placeholder = chatMode() ? "Your message" : "Type a prompt";
    };
  }
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) generate();
  });
  document.body.dataset.ready = "true";
}

start();
