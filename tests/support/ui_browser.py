"""Drives exo's web UI in headless Chromium over the DevTools protocol (CDP).

    python ui_browser.py CHROMIUM URL SCREENSHOT.png [PROMPT]

Loads the page, waits for the cluster view, sends a chat message, watches the answer
stream into the DOM, reloads to check the conversation was kept, saves a screenshot; then
offers the page's calculator demo tool with a forced call (the page shows the call, runs it
and asks the model again) and asks for a JSON-schema answer (shown pretty-printed). Prints
one JSON object with what it saw (the Rust test asserts on it). Every wait is on a state
of the page (a MutationObserver promise), bounded by a timeout.
"""
import re
import base64
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket
from PIL import Image

WAIT_MS = 90_000

HELPERS = r"""
window.__waitFor = (pred, ms) => new Promise((resolve, reject) => {
  let obs = null, timer = null;
  const check = () => {
    let v = null;
    try { v = pred(); } catch (e) { v = null; }
    if (v) { if (obs) obs.disconnect(); clearTimeout(timer); resolve(v); return true; }
    return false;
  };
  if (check()) return;
  obs = new MutationObserver(check);
  obs.observe(document.documentElement, {subtree: true, childList: true, attributes: true, characterData: true});
  timer = setTimeout(() => { obs.disconnect(); reject(new Error("timed out waiting")); }, ms);
});
"""


class Cdp:
    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=WAIT_MS / 1000, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_event(self, name):
        for i, event in enumerate(self.events):
            if event.get("method") == name:
                return self.events.pop(i)
        while True:
            message = json.loads(self.ws.recv())
            if message.get("method") == name:
                return message
            self.events.append(message)

    def eval(self, expression):
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True,
            timeout=WAIT_MS,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}…: {result['exceptionDetails']}")
        return result["result"].get("value")


def start_browser(chromium, profile):
    process = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "--window-size=1400,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    # Chromium says where its DevTools endpoint listens on stderr, once it does.
    for line in process.stderr:
        if "DevTools listening on ws://" in line:
            browser_ws = line.split("listening on ", 1)[1].strip()
            break
    else:
        raise RuntimeError("chromium exited before its DevTools endpoint listened")
    port = browser_ws.split(":")[2].split("/")[0]
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
    page = next(t for t in targets if t["type"] == "page")
    return process, page["webSocketDebuggerUrl"]


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Berlin", "Paris", "Rome"]}},
          "required": ["city"], "additionalProperties": False}


def arithmetic(expression):
    """The calculator's answer, computed here independently of the page: + - * / and
    parentheses on decimal numbers, as the page's text; "error" for anything else, None
    for a division by zero (JavaScript and Python differ there)."""
    tokens = re.findall(r"\d+(?:\.\d+)?|[-+*/()]|\S", expression)
    at = 0

    def factor():
        nonlocal at
        t = tokens[at] if at < len(tokens) else None
        at += 1
        if t == "-":
            return -factor()
        if t == "(":
            v = total()
            if at >= len(tokens) or tokens[at] != ")":
                raise ValueError
            at += 1
            return v
        if t is not None and t[0].isdigit():
            return float(t)
        raise ValueError

    def product():
        nonlocal at
        v = factor()
        while at < len(tokens) and tokens[at] in "*/":
            at += 1
            v = v * factor() if tokens[at - 1] == "*" else v / factor()
        return v

    def total():
        nonlocal at
        v = product()
        while at < len(tokens) and tokens[at] in "+-":
            at += 1
            v = v + product() if tokens[at - 1] == "+" else v - product()
        return v

    try:
        value = total()
        if at != len(tokens):
            raise ValueError
    except (ValueError, IndexError):
        return "error"
    except ZeroDivisionError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def ask(cdp, setup, prompt):
    """Starts a new chat, sets the panel with `setup` (JavaScript), sends `prompt` and
    waits until the page has finished answering (tool steps included); what it shows."""
    cdp.eval(f"""(() => {{
        document.querySelector('#clear').click();
        document.querySelector('#temperature').value = '0';
        {setup}
        document.querySelector('#prompt').value = {json.dumps(prompt)};
        document.querySelector('#send').click();
        return true;
    }})()""")
    return cdp.eval(f"""__waitFor(() => {{
        const done = document.querySelectorAll('#messages .msg.assistant[data-done]');
        if (document.body.dataset.busy || !done.length) return null;
        const all = (selector) => [...document.querySelectorAll(selector)];
        return {{
            calls: all('#messages .tool-call').map(c => ({{ name: c.dataset.name,
                arguments: c.querySelector('pre.arguments').textContent }})),
            results: all('#messages .msg.tool .tool-result pre').map(p => p.textContent),
            json: all('#messages .msg.assistant .body pre.json').map(p => p.textContent),
            answers: done.length, errors: all('#messages .msg.error').map(m => m.textContent),
            stats: done[0].querySelector('.stats').textContent,
        }};
    }}, {WAIT_MS})""")


def first_load(url):
    sizes = {}
    for path in ["/", "/ui/app.js", "/ui/style.css"]:
        body = urllib.request.urlopen(url.rstrip("/") + path).read()
        sizes[path] = {"bytes": len(body), "gzip": len(gzip.compress(body, 9))}
    return sizes


def main():
    chromium, url, screenshot = sys.argv[1:4]
    prompt = sys.argv[4] if len(sys.argv) > 4 else "What is the capital of Germany?"
    profile = tempfile.mkdtemp(prefix="exo-ui-")
    process = None
    try:
        process, page_ws = start_browser(chromium, profile)
        cdp = Cdp(page_ws)
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                 deviceScaleFactor=1, mobile=False)
        cdp.call("Page.addScriptToEvaluateOnNewDocument", source=HELPERS)
        cdp.call("Page.navigate", url=url)
        cdp.wait_event("Page.loadEventFired")
        # The cluster view: three nodes, each with its layer range.
        cluster = cdp.eval(f"""__waitFor(() => {{
            const nodes = [...document.querySelectorAll('#nodes .node')];
            const layers = nodes.map(n => n.querySelector('.layers').dataset.layers);
            return document.body.dataset.ready === '1' && nodes.length === 3 && layers.every(l => l)
              && document.querySelector('#model').value
              ? {{ nodes: nodes.map(n => n.dataset.node), layers,
                   ring_circles: document.querySelectorAll('#ring circle').length }} : null;
        }}, {WAIT_MS})""")
        timing = cdp.eval("""(() => {
            const nav = performance.getEntriesByType('navigation')[0];
            return { dom_interactive_ms: nav.domInteractive, dom_content_loaded_ms: nav.domContentLoadedEventEnd,
                     load_ms: nav.loadEventEnd, app_ready_ms: window.exoReadyAt };
        })()""")
        # Chat: watch the answer's text as it streams in.
        cdp.eval("""(() => {
            window.__seen = new Set();
            new MutationObserver(() => {
              const a = document.querySelector('#messages .msg.assistant[data-streaming] .body');
              if (a && a.textContent) window.__seen.add(a.textContent);
            }).observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true});
            document.querySelector('#temperature').value = '0';
            document.querySelector('#max-tokens').value = '24';
            return true;
        })()""")
        cdp.eval(f"""(() => {{
            document.querySelector('#prompt').value = {json.dumps(prompt)};
            document.querySelector('#send').click();
            return true;
        }})()""")
        chat = cdp.eval(f"""__waitFor(() => {{
            const a = document.querySelector('#messages .msg.assistant[data-done]');
            return a ? {{ text: a.querySelector('.body').textContent, html: a.querySelector('.body').innerHTML,
                         stats: a.querySelector('.stats').textContent, error: a.classList.contains('error'),
                         updates: window.__seen.size }} : null;
        }}, {WAIT_MS})""")
        shot = cdp.call("Page.captureScreenshot", format="png")
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        image = Image.open(screenshot).convert("RGB")
        colours = image.getcolors(maxcolors=1 << 24)
        # The conversation is kept in the browser: a reload shows it again.
        cdp.call("Page.reload")
        cdp.wait_event("Page.loadEventFired")
        kept = cdp.eval(f"""__waitFor(() => {{
            const n = document.querySelectorAll('#messages .msg').length;
            return n ? n : null;
        }}, {WAIT_MS})""")
        cdp.eval(f"__waitFor(() => document.querySelector('#model').value, {WAIT_MS})")
        tools = ask(cdp, """
            document.querySelector('#response-format').value = 'text';
            document.querySelector('#demo-tools').click();
            document.querySelector('#tool-choice').value = 'required';
            document.querySelector('#parallel-tools').checked = false;
            document.querySelector('#max-tokens').value = '64';""", "What is 37 times 91?")
        # How the call and its result look (for a person to check; not asserted on).
        shot = cdp.call("Page.captureScreenshot", format="png")
        with open(screenshot.replace(".png", "-tools.png"), "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        tools["expected_results"] = []
        for call in tools["calls"]:
            try:
                expression = json.loads(call["arguments"])["expression"]
            except (ValueError, KeyError, TypeError):
                expression = None
            tools["expected_results"].append(None if expression is None else arithmetic(expression))
        answer_json = ask(cdp, f"""
            document.querySelector('#tools').value = '';
            document.querySelector('#response-format').value = 'json_schema';
            document.querySelector('#json-schema').value = {json.dumps(json.dumps(SCHEMA))};
            document.querySelector('#max-tokens').value = '24';""", "What is the capital of Germany?")
        print(json.dumps({
            "cluster": cluster, "timing": timing, "chat": chat, "kept_messages": kept,
            "tools": tools, "json_answer": answer_json,
            "screenshot": {"width": image.width, "height": image.height, "colours": len(colours),
                           "top_colour_share": max(c for c, _ in colours) / (image.width * image.height)},
            "first_load": first_load(url),
        }))
    finally:
        if process:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
