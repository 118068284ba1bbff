// exo's web UI: chat with the cluster's model, and watch the cluster. Plain JS, no build
// step, no network beyond this node. State pushed by the node arrives over /v1/events.
"use strict";
const $ = (id) => document.getElementById(id);
const store = {
  get: (k, d) => { try { const v = localStorage.getItem("exo." + k); return v === null ? d : JSON.parse(v); } catch { return d; } },
  set: (k, v) => localStorage.setItem("exo." + k, JSON.stringify(v)),
};

// ---- keys -------------------------------------------------------------------------
function headers(admin) {
  const h = { "content-type": "application/json" };
  const key = admin ? (store.get("adminKey", "") || store.get("apiKey", "")) : store.get("apiKey", "");
  if (key) h.authorization = "Bearer " + key;
  return h;
}
$("api-key").value = store.get("apiKey", "");
$("admin-key").value = store.get("adminKey", "");
$("save-keys").onclick = () => {
  store.set("apiKey", $("api-key").value.trim());
  store.set("adminKey", $("admin-key").value.trim());
  $("keys").open = false;
  loadModels();
  connectEvents();
};

// ---- server-sent events over fetch (EventSource cannot send a key) -------------------
async function readEvents(response, onEvent, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
      }
      if (data) onEvent(name, data);
    }
    if (signal && signal.aborted) return;
  }
}

// ---- markdown (a small, escaping subset: code blocks, inline code, bold, italics,
// headings, lists, links) --------------------------------------------------------------
const esc = (s) => s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
function inline(s) {
  return esc(s)
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>")
    .replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '<a href="$2" rel="noopener" target="_blank">$1</a>');
}
function markdown(text) {
  const out = [];
  const parts = text.split(/```/);
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const nl = part.indexOf("\n");
      const lang = nl >= 0 ? part.slice(0, nl).trim() : "";
      const code = nl >= 0 ? part.slice(nl + 1) : part;
      out.push(`<pre><code class="lang-${esc(lang)}">${esc(code.replace(/\n$/, ""))}</code></pre>`);
      return;
    }
    let list = null;
    for (const line of part.split("\n")) {
      const item = line.match(/^\s*(?:[-*]|\d+\.)\s+(.*)$/);
      if (item) {
        if (!list) { list = []; }
        list.push(`<li>${inline(item[1])}</li>`);
        continue;
      }
      if (list) { out.push(`<ul>${list.join("")}</ul>`); list = null; }
      const h = line.match(/^(#{1,4})\s+(.*)$/);
      if (h) out.push(`<h4>${inline(h[2])}</h4>`);
      else if (line.trim()) out.push(`<p>${inline(line)}</p>`);
    }
    if (list) out.push(`<ul>${list.join("")}</ul>`);
  });
  return out.join("");
}

// ---- tools and JSON answers ----------------------------------------------------------
// "calculator demo" offers this tool, which the page runs itself when the model calls it:
// the node constrains the call's arguments to the schema (whole numbers joined by one to
// three of + - * /, so that even a small model writes an expression), `calculate`
// evaluates it (no eval), and the result goes back to the model as a `tool` message.
const DEMO_TOOLS = [{ type: "function", function: {
  name: "calculator", description: "Evaluates arithmetic on whole numbers, like 12 * 34 + 5",
  parameters: { type: "object", properties: {
    expression: { type: "string", pattern: "^-?[0-9]{1,6}( ?[-+*/] ?-?[0-9]{1,6}){1,3}$" } },
  required: ["expression"], additionalProperties: false },
} }];
// How many answers one message may take when the page runs the calls it asks for.
const MAX_STEPS = 3;

function calculate(expression) {
  const tokens = expression.match(/\d+(?:\.\d+)?|[-+*/()]|\S/g) || [];
  let at = 0;
  const peek = () => tokens[at];
  const take = (t) => { if (tokens[at] !== t) throw new Error(`expected ${t} at ${tokens[at] || "the end"}`); at++; };
  const factor = () => {
    const t = tokens[at++];
    if (t === "-") return -factor();
    if (t === "(") { const v = sum(); take(")"); return v; }
    if (t !== undefined && /^\d/.test(t)) return Number(t);
    throw new Error(`unexpected ${t || "end"}`);
  };
  const product = () => {
    let v = factor();
    while (peek() === "*" || peek() === "/") v = tokens[at++] === "*" ? v * factor() : v / factor();
    return v;
  };
  const sum = () => {
    let v = product();
    while (peek() === "+" || peek() === "-") v = tokens[at++] === "+" ? v + product() : v - product();
    return v;
  };
  const value = sum();
  if (at !== tokens.length) throw new Error(`unexpected ${tokens[at]}`);
  return value;
}

// `text` pretty-printed when it is JSON as a whole (an object or a list), else null.
function prettyJson(text) {
  const t = (text || "").trim();
  if (!/^[[{]/.test(t)) return null;
  try { return JSON.stringify(JSON.parse(t), null, 2); } catch { return null; }
}

// tools, tool_choice and response_format from the "tools & JSON" panel (an Error naming
// the box whose JSON does not parse).
function requestOptions() {
  const options = {};
  const parse = (id, what) => {
    try { return JSON.parse($(id).value); } catch (e) { throw new Error(`${what} is not JSON: ${e.message}`); }
  };
  if ($("tools").value.trim()) {
    options.tools = parse("tools", "the tools box");
    options.tool_choice = $("tool-choice").value;
    options.parallel_tool_calls = $("parallel-tools").checked;
  }
  const format = $("response-format").value;
  if (format === "json_object") options.response_format = { type: "json_object" };
  if (format === "json_schema") {
    options.response_format = { type: "json_schema",
      json_schema: { name: "answer", strict: true, schema: parse("json-schema", "the schema box") } };
  }
  return options;
}
$("parallel-tools").checked = store.get("parallelTools", true);
$("parallel-tools").onchange = () => store.set("parallelTools", $("parallel-tools").checked);
$("demo-tools").onclick = () => {
  $("tools").value = JSON.stringify(DEMO_TOOLS, null, 2);
  store.set("tools", $("tools").value);
  $("extras").open = true;
};

// Streamed `tool_calls` deltas folded into whole calls (by index, as OpenAI's SDKs do).
function addToolDeltas(calls, deltas) {
  for (const d of deltas) {
    const i = d.index === undefined ? calls.length : d.index;
    const call = calls[i] || (calls[i] = { id: "", type: "function", function: { name: "", arguments: "" } });
    if (d.id) call.id = d.id;
    if (d.function && d.function.name) call.function.name += d.function.name;
    if (d.function && d.function.arguments) call.function.arguments += d.function.arguments;
  }
}

// ---- chat ---------------------------------------------------------------------------
let conversation = store.get("conversation", []);
let running = null;

function bodyHtml(m) {
  if (m.role === "tool") {
    return `<div class="tool-result"><span class="name">${esc(m.name || "tool")}</span> returned<pre>${esc(m.content)}</pre></div>`;
  }
  if (m.role !== "assistant") return esc(m.content).replace(/\n/g, "<br>");
  const json = m.error ? null : prettyJson(m.content);
  let html = json !== null ? `<pre class="json">${esc(json)}</pre>` : markdown(m.content || "");
  for (const call of m.tool_calls || []) {
    const args = prettyJson(call.function.arguments);
    html += `<div class="tool-call" data-name="${esc(call.function.name)}"><span class="name">${esc(call.function.name)}</span> called with`
      + `<pre class="arguments">${esc(args !== null ? args : call.function.arguments)}</pre></div>`;
  }
  return html;
}
function renderMessage(m) {
  const div = document.createElement("div");
  div.className = "msg " + m.role + (m.error ? " error" : "");
  const body = document.createElement("div");
  body.className = "body";
  body.innerHTML = bodyHtml(m);
  div.appendChild(body);
  const stats = document.createElement("div");
  stats.className = "stats";
  stats.textContent = m.stats || "";
  div.appendChild(stats);
  $("messages").appendChild(div);
  return { div, body, stats };
}
function renderConversation() {
  $("messages").textContent = "";
  conversation.forEach(renderMessage);
  $("messages").scrollTop = $("messages").scrollHeight;
}

// A message as the API reads it (calls and results keep their ids).
function apiMessage(m) {
  if (m.role === "tool") return { role: "tool", tool_call_id: m.tool_call_id, content: m.content };
  if (m.tool_calls && m.tool_calls.length) return { role: m.role, content: m.content || null, tool_calls: m.tool_calls };
  return { role: m.role, content: m.content };
}

// A message's answer; when it calls the demo calculator, the page answers the calls and
// asks again (at most MAX_STEPS answers; after a forced call the model may answer in text).
async function send(text) {
  document.body.dataset.busy = "1";
  conversation.push({ role: "user", content: text });
  renderMessage(conversation[conversation.length - 1]);
  let options;
  try { options = requestOptions(); } catch (e) { options = { error: e.message }; }
  for (let step = 0; step < MAX_STEPS; step++) {
    const answer = await complete(options);
    const calls = answer.tool_calls || [];
    if (answer.error || !calls.length || !calls.every((c) => c.function.name === "calculator")) break;
    for (const call of calls) {
      let result;
      try { result = String(calculate(JSON.parse(call.function.arguments).expression)); } catch (e) { result = "error: " + e.message; }
      const message = { role: "tool", tool_call_id: call.id, name: call.function.name, content: result };
      conversation.push(message);
      renderMessage(message);
    }
    store.set("conversation", conversation);
    if (options.tool_choice && options.tool_choice !== "none") options.tool_choice = "auto";
  }
  delete document.body.dataset.busy;
}

// One streamed answer to the conversation so far, rendered as it comes.
async function complete(options) {
  const answer = { role: "assistant", content: "" };
  const view = renderMessage(answer);
  view.div.dataset.streaming = "1";
  const controller = new AbortController();
  running = controller;
  $("send").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  let first = null, usage = null, exo = null, finish = null;
  const calls = [];
  try {
    if (options.error) throw new Error(options.error);
    const body = Object.assign({
      model: $("model").value,
      messages: conversation.filter((m) => !m.error).map(apiMessage),
      stream: true,
      stream_options: { include_usage: true },
      temperature: Number($("temperature").value),
      max_tokens: Number($("max-tokens").value),
    }, options);
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(false), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || response.statusText);
    }
    await readEvents(response, (_, data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      const delta = (choice && choice.delta) || {};
      if (delta.content || delta.tool_calls) {
        if (first === null) first = performance.now();
        if (delta.content) answer.content += delta.content;
        if (delta.tool_calls) { addToolDeltas(calls, delta.tool_calls); answer.tool_calls = calls; }
        view.body.innerHTML = bodyHtml(answer);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
      if (choice && choice.finish_reason) finish = choice.finish_reason;
      if (chunk.exo) exo = chunk.exo;
      if (chunk.usage) usage = chunk.usage;
    }, controller.signal);
  } catch (e) {
    if (e.name !== "AbortError") { answer.error = true; answer.content += (answer.content ? "\n\n" : "") + "⚠ " + e.message; view.div.classList.add("error"); }
    else finish = "stopped";
  }
  const end = performance.now();
  const ttft = first === null ? null : (first - started) / 1000;
  const tokens = usage ? usage.completion_tokens : null;
  const rate = exo && exo.decode_tokens_per_second ? exo.decode_tokens_per_second
    : tokens && first !== null && end > first ? (tokens - 1) / ((end - first) / 1000) : null;
  answer.stats = [
    ttft !== null ? `TTFT ${ttft.toFixed(2)} s` : null,
    rate ? `${rate.toFixed(1)} tok/s` : null,
    tokens !== null ? `${tokens} tokens` : null,
    finish ? finish : null,
  ].filter(Boolean).join(" · ");
  view.body.innerHTML = bodyHtml(answer);
  view.stats.textContent = answer.stats;
  delete view.div.dataset.streaming;
  view.div.dataset.done = "1";
  conversation.push(answer);
  store.set("conversation", conversation);
  running = null;
  $("send").disabled = false;
  $("stop").disabled = true;
  return answer;
}

$("composer").onsubmit = (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || running) return;
  $("prompt").value = "";
  send(text);
};
$("prompt").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
};
$("stop").onclick = () => running && running.abort();
$("clear").onclick = () => { conversation = []; store.set("conversation", conversation); renderConversation(); };
for (const id of ["temperature", "max-tokens", "tools", "tool-choice", "response-format", "json-schema"]) {
  const saved = store.get(id, null);
  if (saved !== null) $(id).value = saved;
  $(id).onchange = () => store.set(id, $(id).value);
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: headers(false) });
    if (!response.ok) throw new Error(response.status === 401 ? "API key needed" : response.statusText);
    const list = await response.json();
    $("model").textContent = "";
    for (const m of list.data) {
      const option = document.createElement("option");
      option.value = option.textContent = m.id;
      $("model").appendChild(option);
    }
    return true;
  } catch (e) {
    $("model").innerHTML = `<option value="">${esc(e.message)}</option>`;
    if (e.message === "API key needed") $("keys").open = true;
    return false;
  }
}

// ---- cluster -----------------------------------------------------------------------
const bytes = (n) => {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0; while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const svg = (tag, attrs, text) => {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
};

function renderRing(state, order) {
  const ring = $("ring");
  ring.textContent = "";
  const defs = svg("defs", {});
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
  marker.appendChild(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#5aa9ff" }));
  defs.appendChild(marker);
  ring.appendChild(defs);
  const n = order.length, cx = 180, cy = 150, r = n > 1 ? 105 : 0, nr = 30;
  const pos = order.map((_, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
    return [cx + r * Math.cos(a), cy + r * Math.sin(a)];
  });
  if (n > 1) order.forEach((node, i) => {
    const [x1, y1] = pos[i], [x2, y2] = pos[(i + 1) % n];
    const dx = x2 - x1, dy = y2 - y1, d = Math.hypot(dx, dy) || 1;
    const ux = dx / d, uy = dy / d;
    ring.appendChild(svg("path", { class: "edge", d: `M ${x1 + ux * nr} ${y1 + uy * nr} L ${x2 - ux * (nr + 2)} ${y2 - uy * (nr + 2)}` }));
    const rtt = edgeRtt(state, node.node_id, order[(i + 1) % n].node_id);
    if (rtt !== null) ring.appendChild(svg("text", { class: "sub", x: (x1 + x2) / 2 + uy * 14, y: (y1 + y2) / 2 - ux * 14 }, `${rtt.toFixed(2)} ms`));
  });
  order.forEach((node, i) => {
    const [x, y] = pos[i];
    const cls = node.node_id === state.node_id ? "self" : node.link_state === "error" || node.link_state === "degraded" ? "problem" : "";
    ring.appendChild(svg("circle", { cx: x, cy: y, r: nr, class: cls }));
    ring.appendChild(svg("text", { x, y: y - 2 }, node.node_id.length > 10 ? node.node_id.slice(0, 9) + "…" : node.node_id));
    if (node.layers) ring.appendChild(svg("text", { class: "sub", x, y: y + 12 }, node.layers));
  });
}

// The round trip this node measured to `b` when the edge touches it.
function edgeRtt(state, a, b) {
  const other = a === state.node_id ? b : b === state.node_id ? a : null;
  const link = other && state.links[other];
  return link && link.rtt_ms !== null && link.rtt_ms !== undefined ? link.rtt_ms : null;
}

function renderCluster(state) {
  $("node-title").textContent = `node ${state.node_id} · ${state.model}`;
  $("security").textContent = state.security ? `· ${state.security.cluster}` : "";
  const entries = (state.partition && state.partition.entries) || [];
  const ranges = {};
  for (const e of entries) ranges[e.node_id] = `${e.start_layer}..${e.end_layer}`;
  const nodes = state.nodes.map((n) => Object.assign({}, n, { layers: ranges[n.node_id] || null }));
  const order = entries.length ? entries.map((e) => nodes.find((n) => n.node_id === e.node_id) || { node_id: e.node_id, layers: ranges[e.node_id] }) : nodes;
  renderRing(state, order);
  const cards = $("nodes");
  cards.textContent = "";
  for (const n of nodes) {
    const c = n.capabilities || {};
    const div = document.createElement("div");
    div.className = "node";
    div.dataset.node = n.node_id;
    const device = c.engine_device ? `${c.engine_device}${c.gpu_name ? " · " + c.gpu_name : c.cpu_model ? " · " + c.cpu_model : ""}` : "?";
    const link = state.links[n.node_id];
    const loaded = n.node_id === state.node_id && state.engine && state.engine.loaded_shards ? state.engine.loaded_shards.join(" ") : "";
    div.innerHTML = `<b>${esc(n.node_id)}</b> <span class="muted">${esc(n.link_state)}</span><br>
      <span class="muted">${esc(n.address)}</span><br>
      ${esc(device)}<br>
      memory ${bytes(c.available_memory_bytes)} free of ${bytes(c.memory_bytes)}<br>
      layers <span class="layers" data-layers="${esc(n.layers || "")}">${esc(n.layers || "none")}</span>
      ${loaded ? `<br><span class="muted">loaded here: ${esc(loaded)}</span>` : ""}
      ${link && link.rtt_ms != null ? `<br><span class="muted">rtt ${link.rtt_ms.toFixed(2)} ms · ${bytes(link.bytes_sent)} sent · ${link.errors} errors</span>` : ""}`;
    cards.appendChild(div);
  }
  if (state.partition && state.partition.error) {
    const p = document.createElement("p");
    p.className = "err";
    p.textContent = state.partition.error;
    cards.appendChild(p);
  }
  const downloads = (state.downloads || []).filter((d) => d.state === "running");
  $("downloads").innerHTML = downloads.length ? downloads.map((d) => {
    const pct = d.bytes_total ? (100 * d.bytes_done) / d.bytes_total : 0;
    return `<div>${esc(d.model)} · ${esc(d.what)} · ${bytes(d.bytes_done)} / ${bytes(d.bytes_total)}${d.eta_seconds ? ` · ${Math.ceil(d.eta_seconds)} s left` : ""}<div class="bar"><span style="width:${pct.toFixed(1)}%"></span></div></div>`;
  }).join("") : '<p class="muted">none running</p>';
  const loading = state.resources.filter((r) => r.state === "initializing");
  if (loading.length) $("downloads").innerHTML += loading.map((r) => `<div>${esc(r.name)} · loading<div class="bar"><span style="width:100%;opacity:.4"></span></div></div>`).join("");
  const tbody = $("resources").tBodies[0];
  tbody.textContent = "";
  let problems = 0;
  for (const r of state.resources) {
    const tr = document.createElement("tr");
    if (r.problem) { tr.className = "problem"; problems++; }
    tr.innerHTML = `<td>${esc(r.id)}</td><td>${esc(r.type)}</td><td class="state-${esc(r.state)}">${esc(r.state)}${r.last_error ? `<div class="err">${esc(r.last_error)}</div>` : ""}</td><td></td>`;
    const button = document.createElement("button");
    button.className = "danger";
    button.textContent = "reset";
    button.onclick = () => reset(r, button);
    tr.lastChild.appendChild(button);
    tbody.appendChild(tr);
  }
  $("problems").textContent = problems ? `· ${problems} problem${problems > 1 ? "s" : ""}` : "· all well";
}

async function reset(resource, button) {
  if (!confirm(`Reset ${resource.id} (${resource.type})?`)) return;
  button.disabled = true;
  try {
    const response = await fetch(`/v1/resources/${encodeURIComponent(resource.id)}/reset?type=${encodeURIComponent(resource.type)}`, { method: "POST", headers: headers(true) });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) alert((body.error && body.error.message) || body.error || response.statusText);
  } finally { button.disabled = false; }
}

let events = null;
async function connectEvents() {
  if (events) events.abort();
  const controller = new AbortController();
  events = controller;
  for (let delay = 500; !controller.signal.aborted; delay = Math.min(delay * 2, 8000)) {
    try {
      const response = await fetch("/v1/events", { headers: headers(false), signal: controller.signal });
      if (!response.ok) throw new Error(response.status === 401 ? "API key needed" : response.statusText);
      $("conn").textContent = "live"; $("conn").className = "pill live";
      delay = 500;
      await readEvents(response, (name, data) => {
        if (name !== "cluster") return;
        renderCluster(JSON.parse(data));
        if (!document.body.dataset.ready) { document.body.dataset.ready = "1"; window.exoReadyAt = performance.now(); }
      }, controller.signal);
    } catch (e) {
      if (controller.signal.aborted) return;
      $("conn").textContent = e.message === "API key needed" ? e.message : "reconnecting…";
      $("conn").className = "pill down";
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}

renderConversation();
loadModels();
connectEvents();
