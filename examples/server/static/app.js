"use strict";
// The chat page: several windows, each following one chat of the server's HTTP contract.
//
// Safety: user text is only ever set as text. Model output is Markdown rendered by markdown-it
// with raw HTML off (so any HTML in it is shown as text), links limited to safe schemes and
// opened with rel="noopener noreferrer", and images shown only when they are data URLs. The
// server's Content-Security-Policy is the second net: no inline script, no foreign image.

const h = (tag, cls, text) => {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text !== undefined) el.textContent = text;
  return el;
};
/**
 * A button; `more` is read to screen readers after the visible label ("Copy" + " reply"), so
 * the visible word stays the start of its name when the label changes.
 */
const button = (label, cls, onclick, more) => {
  const b = h("button", cls);
  b.type = "button";
  b.appendChild(document.createTextNode(label));
  if (more) b.appendChild(h("span", "sr-only", more));
  if (onclick) b.addEventListener("click", onclick);
  return b;
};
/** Changes a button's visible label, keeping what `button` added for screen readers. */
const relabel = (b, label) => { b.firstChild.textContent = label; };
const uuid = () => (crypto.randomUUID ? crypto.randomUUID()
  : Date.now().toString(36) + Math.random().toString(36).slice(2));
const enc = encodeURIComponent;
const STORE_KEY = "chatstream.windows";
/** Messages per history page: a chat opens on its newest page, whatever its length. */
const PAGE = 50;
/** The images the server takes (`ServerOptions`' defaults): types, size each, and count. */
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
const MAX_IMAGE_BYTES = 5 * 1024 * 1024;
const MAX_IMAGES = 4;

/**
 * Every request of the page goes through here: JSON in and out, and errors thrown with the
 * server's message and status. A 401 (no session yet, or it ended) shows the sign-in form and
 * sends the request again once signed in.
 */
async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res = await fetch(path, init);
  if (res.status === 401) {
    await signIn();
    res = await fetch(path, init);
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error((data && data.error && data.error.message) || res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

/**
 * Sign-in by cookie, since an EventSource cannot send an Authorization header: the key or
 * token is posted once to /api/session, which answers with an HttpOnly session cookie that
 * every later request (event streams included) carries. The page never keeps the key.
 */
const signInForm = document.getElementById("sign-in");
const signInToken = document.getElementById("sign-in-token");
const signInError = document.getElementById("sign-in-error");
let signingIn = null;
/** Resolves once the user has signed in; every request that met a 401 waits for the same one. */
function signIn() {
  if (signingIn) return signingIn;
  signingIn = new Promise((resolve) => {
    signInForm.hidden = false;
    signInToken.focus();
    const submit = async (e) => {
      e.preventDefault();
      signInError.textContent = "";
      const res = await fetch("/api/session", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: signInToken.value.trim() }),
      }).catch(() => null);
      if (res && res.status === 204) {
        signInToken.value = "";
        signInForm.hidden = true;
        signInForm.removeEventListener("submit", submit);
        signingIn = null;
        resolve();
        return;
      }
      const data = res && await res.json().catch(() => null);
      signInError.textContent = (data && data.error && data.error.message) || "Could not sign in.";
      signInToken.select();
    };
    signInForm.addEventListener("submit", submit);
  });
  return signingIn;
}

/** Who the page is signed in as: `{user, credential}`, asking to sign in until the server knows. */
async function whoAmI() {
  return api("GET", "/api/session");
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try { await api("DELETE", "/api/session"); } catch (e) { /* signed out in any case */ }
  location.reload();
});

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain http on another host is not a secure context: the clipboard API is missing there.
  const area = h("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "sr-only";
  document.body.appendChild(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("the browser refused to copy");
}

// ---------------------------------------------------------------------------------------------
// Markdown

const md = window.markdownit({ html: false, linkify: true, typographer: false });
const escapeHtml = md.utils.escapeHtml;
const SAFE_SCHEME = /^(https?|mailto):/i;
const DATA_IMAGE = /^data:image\/(gif|png|jpeg|webp);/i;
const defaultValidate = md.validateLink.bind(md);
// On top of markdown-it's own check (no javascript:, vbscript:, file: or non-image data:): a
// link with a scheme must be http(s) or mailto; an image source may also be a data image.
md.validateLink = (url) => defaultValidate(url)
  && (!/^[a-z][a-z0-9+.-]*:/i.test(url.trim()) || SAFE_SCHEME.test(url.trim()) || DATA_IMAGE.test(url.trim()));

const renderToken = (tokens, idx, options, env, self) => self.renderToken(tokens, idx, options);
const defaultLinkOpen = md.renderer.rules.link_open || renderToken;
md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
  const token = tokens[idx];
  if (DATA_IMAGE.test(token.attrGet("href") || "")) token.attrSet("href", "");
  token.attrSet("target", "_blank");
  token.attrSet("rel", "noopener noreferrer nofollow");
  return defaultLinkOpen(tokens, idx, options, env, self);
};

const defaultImage = md.renderer.rules.image;
md.renderer.rules.image = (tokens, idx, options, env, self) => {
  const token = tokens[idx];
  const src = token.attrGet("src") || "";
  if (DATA_IMAGE.test(src)) return defaultImage(tokens, idx, options, env, self);
  // Any other image would be fetched from wherever the model pointed: show where it is instead.
  const alt = escapeHtml(self.renderInlineAsText(token.children, options, env) || "image");
  if (!src) return alt;
  return `<a href="${escapeHtml(src)}" target="_blank" rel="noopener noreferrer nofollow" `
    + `class="image-link">[image: ${alt}]</a>`;
};

function highlighted(code, lang) {
  if (lang && window.hljs && hljs.getLanguage(lang)) {
    const html = hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    return `<code class="hljs language-${escapeHtml(lang)}">${html}</code>`;
  }
  return `<code${lang ? ` class="language-${escapeHtml(lang)}"` : ""}>${escapeHtml(code)}</code>`;
}

function codeBlock(tokens, idx) {
  const token = tokens[idx];
  const info = token.info ? md.utils.unescapeAll(token.info).trim() : "";
  const lang = info.split(/\s+/)[0];
  return `<div class="code-block"><div class="code-head"><span>${escapeHtml(lang || "code")}</span>`
    + `<button type="button" class="small copy-code">Copy<span class="sr-only"> code</span></button></div>`
    + `<pre>${highlighted(token.content, lang)}</pre></div>\n`;
}
md.renderer.rules.fence = codeBlock;
md.renderer.rules.code_block = codeBlock;

function fragment(html) {
  const t = document.createElement("template");
  t.innerHTML = html;
  return t.content;
}

/** What a screen reader should hear for rendered nodes: text, without the code blocks' buttons. */
function spoken(nodes) {
  return nodes.map((n) => (n.classList && n.classList.contains("code-block")
    ? `Code: ${n.querySelector("code").textContent}` : n.textContent)).join("\n").trim();
}

/**
 * Renders Markdown into `el`. A growing reply is rendered incrementally: blocks that can no
 * longer change are rendered once and kept; each frame re-renders only the open end, so the
 * work per frame does not grow with the length of the reply.
 */
class MarkdownView {
  constructor(el) {
    this.el = el;
    this.reset();
  }
  reset() {
    this.el.replaceChildren();
    this.settled = 0; // characters of the source rendered into kept nodes
    this.tail = []; // the nodes of the open end
  }
  /** The whole text at once. */
  render(text) {
    this.reset();
    this.el.appendChild(fragment(md.render(text)));
  }
  /** `text` has grown since the last call; returns what became final, as spoken text. */
  grow(text) {
    const rest = text.slice(this.settled);
    let tokens = md.parse(rest, {});
    let spokenText = "";
    const starts = [];
    tokens.forEach((t, i) => { if (t.level === 0 && t.nesting !== -1 && t.map) starts.push(i); });
    // The last block is still being written, and the one before it may still join it (a list
    // continued after a blank line): everything before those two is final, when a blank line
    // separates it from them.
    if (starts.length >= 3) {
      const keep = starts[starts.length - 2];
      const line = tokens[keep].map[0];
      const lines = rest.split("\n", line);
      if (line > 0 && /^[ \t]*$/.test(lines[line - 1])) {
        const done = fragment(md.renderer.render(tokens.slice(0, keep), md.options, {}));
        spokenText = spoken([...done.childNodes]);
        this.el.insertBefore(done, this.tail[0] || null);
        this.settled += lines.reduce((n, l) => n + l.length + 1, 0);
        tokens = tokens.slice(keep);
      }
    }
    for (const n of this.tail) n.remove();
    const open = fragment(md.renderer.render(tokens, md.options, {}));
    this.tail = [...open.childNodes];
    this.el.appendChild(open);
    return spokenText;
  }
  /** The text of the open end, once the reply is over. */
  spokenTail() {
    return spoken(this.tail);
  }
}

function prettyArguments(raw) {
  try {
    return { text: JSON.stringify(JSON.parse(raw), null, 2), json: true };
  } catch (e) {
    return { text: raw, json: false }; // still streaming, or not JSON at all
  }
}

// ---------------------------------------------------------------------------------------------
// Messages

const ROLE_LABELS = { user: "You", assistant: "Reply", tool: "Tool result", system: "System" };
const STATUS_LABELS = { cancelled: "stopped", failed: "failed", interrupted: "interrupted" };

class MessageView {
  constructor(win, m) {
    this.win = win;
    this.id = m.id;
    this.role = m.role;
    this.replyTo = m.replyTo || null;
    this.text = m.content || "";
    this.reasoning = m.reasoning || "";
    this.toolCalls = (m.toolCalls || []).map((c) => ({ ...c }));
    this.status = m.status;
    this.error = m.error || "";
    this.createdAt = m.createdAt ? new Date(m.createdAt) : new Date();
    this.pending = false;

    this.el = h("article", `msg ${m.role}`);
    this.el.dataset.id = m.id;
    this.el.setAttribute("aria-label", ROLE_LABELS[m.role] || m.role);
    this.body = h("div", "body");
    if (m.role === "assistant") this.buildAssistant();
    else if (m.role === "tool") this.buildTool(m);
    else this.buildParts(m);
    this.footer = h("div", "footer");
    this.metaEl = h("span", "meta");
    this.timeEl = h("time");
    this.timeEl.dateTime = this.createdAt.toISOString();
    this.timeEl.title = this.createdAt.toLocaleString();
    this.timeEl.textContent = this.createdAt.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    this.footer.append(this.metaEl, this.timeEl);
    this.body.appendChild(this.footer);
    if (m.role === "assistant") {
      this.actions = h("div", "actions");
      this.copyBtn = button("Copy", "small copy", () => this.copy(), " reply");
      this.regenBtn = button("Regenerate", "small regenerate", () => this.win.regenerate());
      this.regenBtn.hidden = true;
      this.offering = false;
      this.actions.append(this.copyBtn, this.regenBtn);
      this.footer.appendChild(this.actions);
    }
    this.el.appendChild(this.body);
    if (m.role === "assistant") this.paintAll();
  }
  buildAssistant() {
    this.bar = h("div", "superseded-bar");
    this.toggle = button("Show", "small", () => {
      const open = this.el.classList.toggle("expanded");
      relabel(this.toggle, open ? "Hide" : "Show");
      this.toggle.setAttribute("aria-expanded", String(open));
    }, " the earlier reply");
    this.toggle.setAttribute("aria-expanded", "false");
    this.bar.append(h("span", null, "Earlier reply, replaced by a regenerated one"), this.toggle);
    this.el.appendChild(this.bar);
    this.details = h("details", "reasoning");
    this.details.appendChild(h("summary", null, "Reasoning"));
    this.reasoningEl = h("div", "reasoning-text");
    this.details.appendChild(this.reasoningEl);
    this.toolsEl = h("div", "tools");
    this.textEl = h("div", "text");
    this.markdown = new MarkdownView(this.textEl);
    this.errorEl = h("div", "error");
    this.body.append(this.details, this.toolsEl, this.textEl, this.errorEl);
    this.cards = [];
  }
  /** A user's text and images, in their order; an image by https URL is a link (not fetched). */
  buildParts(m) {
    const parts = m.parts && m.parts.length ? m.parts : [{ type: "text", text: this.text }];
    let images = null;
    for (const p of parts) {
      if (p.type === "text") {
        if (p.text) this.body.appendChild(h("div", "text", p.text));
        images = null;
        continue;
      }
      if (!images) images = this.body.appendChild(h("div", "images"));
      if (p.type === "imageBase64") {
        const img = h("img");
        img.src = `data:${p.mediaType};base64,${p.data}`;
        img.alt = "Attached image";
        images.appendChild(img);
      } else if (p.type === "imageUrl") {
        const a = h("a", "image-link", "Image: " + p.url);
        a.href = /^https:/i.test(p.url) ? p.url : "#";
        a.rel = "noopener noreferrer";
        a.target = "_blank";
        images.appendChild(a);
      }
    }
  }
  buildTool(m) {
    const d = h("details", "tool-call");
    const s = h("summary", null, "Tool result ");
    if (m.toolCallId) s.appendChild(h("code", null, m.toolCallId));
    const pre = h("pre");
    pre.appendChild(h("code", null, m.content || ""));
    d.append(s, pre);
    this.body.appendChild(d);
  }
  set superseded(on) {
    this.el.classList.toggle("superseded", on);
  }
  get superseded() {
    return this.el.classList.contains("superseded");
  }

  /** A message from history, or one whose stream restarts: everything from scratch. */
  set(m) {
    this.text = m.content || "";
    this.reasoning = m.reasoning || "";
    this.toolCalls = (m.toolCalls || []).map((c) => ({ ...c }));
    this.status = m.status;
    this.error = m.error || "";
    if (this.role === "assistant") this.paintAll();
  }
  paintAll() {
    const stick = this.win.atBottom();
    this.markdown.render(this.text);
    this.reasoningEl.textContent = this.reasoning;
    this.reasoningShown = this.reasoning.length;
    this.paintTools();
    this.paintState();
    if (stick) this.win.toBottom();
  }

  // Streaming: deltas only change the model; painting happens at most once per frame.
  restart() {
    this.text = "";
    this.reasoning = "";
    this.toolCalls = [];
    this.error = "";
    this.status = "streaming";
    this.markdown.reset();
    this.paintAll();
  }
  appendText(t) { this.text += t; this.schedule(); }
  appendReasoning(t) { this.reasoning += t; this.schedule(); }
  appendToolCall(d) {
    const call = this.toolCalls[d.index] || (this.toolCalls[d.index] = { index: d.index, id: "", name: "", arguments: "" });
    if (d.id) call.id = d.id;
    if (d.name) call.name = d.name;
    call.arguments += d.arguments || "";
    this.toolsDirty = true;
    this.schedule();
  }
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => this.paintLive());
  }
  paintLive() {
    this.pending = false;
    const stick = this.win.atBottom();
    const settled = this.markdown.grow(this.text);
    if (settled) this.win.announce(settled);
    if (this.reasoning.length > this.reasoningShown) {
      this.reasoningEl.appendChild(document.createTextNode(this.reasoning.slice(this.reasoningShown)));
      this.reasoningShown = this.reasoning.length;
    }
    if (this.toolsDirty) this.paintTools();
    this.paintState();
    if (stick) this.win.toBottom();
  }
  /** The reply ended with `status`. */
  finish(status) {
    if (this.pending) this.paintLive();
    this.status = status;
    const rest = this.markdown.spokenTail();
    if (rest) this.win.announce(rest);
    if (STATUS_LABELS[status]) this.win.announce(`Reply ${STATUS_LABELS[status]}.`);
    this.paintTools();
    this.paintState();
  }

  paintTools() {
    this.toolsDirty = false;
    this.toolCalls.forEach((call, i) => {
      if (!call) return;
      let card = this.cards[i];
      if (!card) {
        card = { el: h("details", "tool-call"), name: h("code"), code: h("code") };
        const summary = h("summary", null, "Tool call ");
        summary.appendChild(card.name);
        const pre = h("pre");
        pre.appendChild(card.code);
        card.el.append(summary, pre);
        this.toolsEl.appendChild(card.el);
        this.cards[i] = card;
      }
      card.name.textContent = call.name || "…";
      const args = prettyArguments(call.arguments || "");
      if (args.json && window.hljs) {
        card.code.className = "hljs language-json";
        card.code.innerHTML = hljs.highlight(args.text, { language: "json", ignoreIllegals: true }).value;
      } else {
        card.code.className = "";
        card.code.textContent = args.text;
      }
    });
  }
  paintState() {
    this.details.hidden = this.reasoning === "";
    const streaming = this.status === "streaming";
    this.el.classList.toggle("streaming", streaming);
    this.el.setAttribute("aria-busy", String(streaming));
    this.metaEl.textContent = STATUS_LABELS[this.status] || "";
    this.errorEl.replaceChildren();
    this.errorEl.hidden = true;
    if (this.status === "failed" || this.status === "interrupted") {
      this.errorEl.hidden = false;
      this.errorEl.appendChild(h("span", null, this.error
        || (this.status === "failed" ? "The reply failed." : "The reply was interrupted.")));
      const again = button("Regenerate", "small regenerate", () => this.win.regenerate());
      again.hidden = !this.offering;
      this.errorEl.appendChild(again);
    }
    this.actions.hidden = streaming;
    if (this.paintedStatus !== this.status) {
      this.paintedStatus = this.status;
      this.win.refreshActions();
    }
  }
  /** Whether this reply offers to be regenerated (see `ChatWindow.refreshActions`). */
  offerRegenerate(on) {
    this.offering = on;
    this.regenBtn.hidden = !on;
    for (const b of this.errorEl.querySelectorAll("button.regenerate")) b.hidden = !on;
  }
  async copy() {
    try {
      await copyText(this.text);
      relabel(this.copyBtn, "Copied");
      this.win.announce("Reply copied.");
      setTimeout(() => relabel(this.copyBtn, "Copy"), 1500);
    } catch (e) {
      this.win.say(`Could not copy: ${e.message}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Windows

let windowCount = 0;

class ChatWindow {
  constructor(chatId, title) {
    const n = ++windowCount;
    this.chatId = chatId;
    this.title = title || chatId;
    this.views = new Map();
    this.latestReply = new Map(); // user message id → the newest reply to it
    this.source = null;
    this.live = null;
    this.oldest = null;
    this.exhausted = false;
    this.loadingOlder = false;

    this.el = h("section", "window");
    this.el.dataset.chat = chatId;
    this.el.setAttribute("aria-labelledby", `title-${n}`);
    const head = h("div", "window-head");
    this.head = head;
    this.titleEl = h("h2", "title", this.title);
    this.titleEl.id = `title-${n}`;
    this.renameBtn = button("\u270e", "icon rename", () => this.rename());
    this.renameBtn.setAttribute("aria-label", "Rename chat");
    this.renameBtn.title = "Rename chat";
    this.stateEl = h("span", "state");
    this.stateEl.setAttribute("role", "status");
    const close = button("\u00d7", "icon close", () => windows.close(this));
    close.setAttribute("aria-label", "Close window");
    close.title = "Close window";
    head.append(this.titleEl, this.renameBtn, this.stateEl, close);

    this.list = h("div", "messages");
    this.list.tabIndex = 0; // scrollable with the keyboard
    this.list.setAttribute("role", "region");
    this.edge = h("div", "history-edge");
    this.list.appendChild(this.edge);
    this.list.addEventListener("click", (e) => this.onListClick(e));

    this.announcer = h("div", "sr-only");
    this.announcer.setAttribute("aria-live", "polite");
    this.notice = h("div", "notice");
    this.notice.setAttribute("aria-live", "polite");

    const composer = h("form", "composer");
    const label = h("label", "sr-only", "Message");
    label.htmlFor = `input-${n}`;
    this.input = h("textarea");
    this.input.id = `input-${n}`;
    this.input.rows = 1;
    this.input.placeholder = "Message";
    this.input.title = "Enter sends, Shift+Enter starts a new line, Escape stops the reply";
    this.sendBtn = h("button", "primary send", "Send");
    this.sendBtn.type = "submit";
    this.stopBtn = button("Stop", "stop", () => this.stop());
    // Images: picked, pasted or dropped; shown as thumbnails until sent.
    this.attached = [];
    this.fileInput = h("input");
    this.fileInput.type = "file";
    this.fileInput.accept = IMAGE_TYPES.join(",");
    this.fileInput.multiple = true;
    this.fileInput.hidden = true;
    this.fileInput.setAttribute("aria-label", "Attach images");
    this.attachBtn = button("\u{1F4CE}", "icon attach", () => this.fileInput.click());
    this.attachBtn.setAttribute("aria-label", "Attach image");
    this.attachBtn.title = "Attach image (or paste or drop one)";
    this.thumbs = h("div", "thumbs");
    this.thumbs.setAttribute("aria-label", "Images to send");
    this.thumbs.hidden = true;
    composer.append(label, this.fileInput, this.attachBtn, this.input, this.sendBtn, this.stopBtn);
    this.el.append(head, this.list, this.announcer, this.notice, this.thumbs, composer);
    this.setTitle(this.title);

    composer.addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.send(); }
    });
    this.input.addEventListener("input", () => this.fitInput());
    this.fileInput.addEventListener("change", () => {
      this.attach([...this.fileInput.files]);
      this.fileInput.value = "";
    });
    this.input.addEventListener("paste", (e) => {
      const files = [...(e.clipboardData ? e.clipboardData.files : [])];
      if (files.length) { e.preventDefault(); this.attach(files); }
    });
    this.el.addEventListener("dragover", (e) => {
      if (e.dataTransfer && [...e.dataTransfer.types].includes("Files")) {
        e.preventDefault();
        this.el.classList.add("dropping");
      }
    });
    this.el.addEventListener("dragleave", (e) => {
      if (!this.el.contains(e.relatedTarget)) this.el.classList.remove("dropping");
    });
    this.el.addEventListener("drop", (e) => {
      this.el.classList.remove("dropping");
      const files = [...(e.dataTransfer ? e.dataTransfer.files : [])];
      if (files.length) { e.preventDefault(); this.attach(files); }
    });
    this.el.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.source) { e.preventDefault(); this.stop(); }
    });
    this.setGenerating(false);
  }

  atBottom() { return this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 48; }
  toBottom() { this.list.scrollTop = this.list.scrollHeight; }
  say(text) { this.notice.textContent = text || ""; }
  announce(text) {
    this.announcer.appendChild(h("p", null, text));
    while (this.announcer.childNodes.length > 20) this.announcer.firstChild.remove();
  }
  fitInput() {
    this.input.style.height = "auto";
    this.input.style.height = `${this.input.scrollHeight + 2}px`;
  }
  setGenerating(on) {
    this.el.classList.toggle("generating", on);
    this.stateEl.textContent = on ? "generating" : "";
    this.stopBtn.disabled = !on;
    this.sendBtn.disabled = on;
    this.refreshActions();
  }
  setTitle(title) {
    this.title = title || this.chatId;
    this.titleEl.textContent = this.title;
    this.list.setAttribute("aria-label", `Messages of ${this.title}`);
  }

  /** Adds or updates a message; `older` when it comes from a page before everything shown. */
  view(m, older = false) {
    let v = this.views.get(m.id);
    if (v) { v.set(m); return v; }
    const empty = this.list.querySelector(".empty");
    if (empty) empty.remove();
    v = new MessageView(this, m);
    this.views.set(m.id, v);
    if (older) this.edge.after(v.el);
    else this.list.appendChild(v.el);
    if (v.replyTo) {
      // Regenerated replies answer the same user message: only the newest is current.
      const current = this.latestReply.get(v.replyTo);
      if (older && current) v.superseded = true;
      else {
        if (current && current !== v) current.superseded = true;
        this.latestReply.set(v.replyTo, v);
      }
    }
    return v;
  }
  /** Regenerate is offered on the chat's newest message when it is a reply, and not while one is live. */
  refreshActions() {
    const last = this.list.lastElementChild;
    const view = last && last.dataset.id ? this.views.get(last.dataset.id) : null;
    const target = view && view.regenBtn ? view : null;
    if (this.offered && this.offered !== target) this.offered.offerRegenerate(false);
    if (target) target.offerRegenerate(this.source === null);
    this.offered = target;
  }
  onListClick(e) {
    const copy = e.target.closest("button.copy-code");
    if (!copy) return;
    const code = copy.closest(".code-block").querySelector("code").textContent;
    copyText(code).then(() => {
      relabel(copy, "Copied");
      this.announce("Code copied.");
      setTimeout(() => relabel(copy, "Copy"), 1500);
    }, (err) => this.say(`Could not copy: ${err.message}`));
  }

  /**
   * A page of history before `before` (the newest page without it), oldest first, and whether
   * there is more: one message more than a page is asked for, and only shown with the next page.
   */
  async history(before) {
    const page = await api("GET", `/api/messages/${enc(this.chatId)}?limit=${PAGE + 1}`
      + `${before ? `&before=${enc(before)}` : ""}`);
    const more = page.length > PAGE;
    return { messages: more ? page.slice(1) : page, more };
  }
  async open() {
    let page;
    let more;
    try {
      ({ messages: page, more } = await this.history(null));
    } catch (e) {
      this.say(`Could not load history: ${e.message}`);
      return;
    }
    for (const m of page) this.view(m);
    this.oldest = page.length ? page[0].id : null;
    this.exhausted = !more;
    if (page.length === 0) this.list.appendChild(h("p", "empty", "No messages yet."));
    this.paintEdge();
    this.refreshActions();
    this.toBottom();
    if (page.some((m) => m.status === "streaming")) this.follow();
    // Older pages load as the top of the list comes into view.
    this.observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) this.loadOlder();
    }, { root: this.list, rootMargin: "200px 0px 0px 0px" });
    this.observer.observe(this.edge);
  }
  paintEdge() {
    this.edge.textContent = this.loadingOlder ? "Loading older messages\u2026"
      : (this.exhausted && this.pagedBack ? "Start of the chat" : "");
  }
  async loadOlder() {
    if (this.loadingOlder || this.exhausted || !this.oldest) return;
    this.loadingOlder = true;
    this.paintEdge();
    let page;
    let more;
    try {
      ({ messages: page, more } = await this.history(this.oldest));
    } catch (e) {
      this.say(`Could not load older messages: ${e.message}`);
      this.loadingOlder = false;
      this.paintEdge();
      return;
    }
    // Keep what the reader was looking at where it was.
    const fromBottom = this.list.scrollHeight - this.list.scrollTop;
    for (let i = page.length - 1; i >= 0; i--) this.view(page[i], true);
    this.exhausted = !more;
    this.pagedBack = true;
    if (page.length) this.oldest = page[0].id;
    this.loadingOlder = false;
    this.paintEdge();
    this.list.scrollTop = this.list.scrollHeight - fromBottom;
    // A short page may leave the top in view: the observer only reports changes.
    requestAnimationFrame(() => {
      const top = this.edge.getBoundingClientRect().bottom;
      if (top > this.list.getBoundingClientRect().top - 200) this.loadOlder();
    });
  }

  /** Adds image files to the message being written, refusing what the server would refuse. */
  async attach(files) {
    for (const file of files) {
      if (!IMAGE_TYPES.includes(file.type)) {
        this.say(`${file.name || "That file"} is not a PNG, JPEG, GIF or WebP image.`);
        continue;
      }
      if (file.size > MAX_IMAGE_BYTES) {
        this.say(`${file.name || "That image"} is larger than ${MAX_IMAGE_BYTES / 1048576} MiB.`);
        continue;
      }
      if (this.attached.length >= MAX_IMAGES) {
        this.say(`At most ${MAX_IMAGES} images per message.`);
        break;
      }
      const url = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(file);
      }).catch((e) => { this.say(`Could not read ${file.name}: ${e.message}`); return null; });
      if (url) this.attached.push({ url, name: file.name || "pasted image" });
    }
    this.paintThumbs();
  }
  paintThumbs() {
    this.thumbs.replaceChildren();
    this.thumbs.hidden = this.attached.length === 0;
    this.attached.forEach((a, i) => {
      const item = h("figure", "thumb");
      const img = h("img");
      img.src = a.url;
      img.alt = a.name;
      const remove = button("\u00d7", "icon remove", () => {
        this.attached.splice(i, 1);
        this.paintThumbs();
        this.input.focus();
      });
      remove.setAttribute("aria-label", `Remove ${a.name}`);
      item.append(img, remove);
      this.thumbs.appendChild(item);
    });
  }

  async send() {
    const content = this.input.value.trim();
    if ((!content && !this.attached.length) || this.source) return;
    this.say("");
    try {
      const body = { chatId: this.chatId, content, sender: "user", clientMessageId: uuid() };
      if (this.attached.length) body.attachments = this.attached.map((a) => ({ url: a.url }));
      const res = await api("POST", "/api/messages", body);
      this.input.value = "";
      this.attached = [];
      this.paintThumbs();
      this.fitInput();
      this.view(res.userMessage);
      this.toBottom();
      this.follow();
    } catch (e) {
      this.say(e.status === 409 ? "A reply is still being generated in this chat." : `Not sent: ${e.message}`);
    }
  }
  /** Answers the last message again through the server; the earlier reply stays, superseded. */
  async regenerate() {
    if (this.source) return;
    this.say("");
    try {
      await api("POST", `/api/chats/${enc(this.chatId)}/regenerate`);
      this.toBottom();
      this.follow();
    } catch (e) {
      this.say(e.status === 409 ? "A reply is still being generated in this chat."
        : `Could not regenerate: ${e.message}`);
    }
  }
  async stop() {
    try { await api("POST", `/api/stream/${enc(this.chatId)}/terminate`); } catch (e) { this.say(`Could not stop: ${e.message}`); }
  }
  rename() {
    const input = h("input");
    input.value = this.title;
    input.maxLength = 200;
    input.setAttribute("aria-label", "Chat title");
    this.titleEl.hidden = true;
    this.renameBtn.hidden = true;
    this.titleEl.after(input);
    input.focus();
    input.select();
    let over = false;
    const end = async (save) => {
      if (over) return;
      over = true;
      const title = input.value.trim();
      input.remove();
      this.titleEl.hidden = false;
      this.renameBtn.hidden = false;
      this.renameBtn.focus();
      if (!save || !title || title === this.title) return;
      try {
        const chat = await api("PATCH", `/api/chats/${enc(this.chatId)}`, { title });
        this.setTitle(chat.title);
        refreshChats();
      } catch (e) {
        this.say(`Not renamed: ${e.message}`);
      }
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); end(true); }
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); end(false); }
    });
    input.addEventListener("blur", () => end(true));
  }
  reload() {
    if (this.observer) this.observer.disconnect();
    this.views.clear();
    this.latestReply.clear();
    this.offered = null;
    this.list.replaceChildren(this.edge);
    this.open();
  }

  /** Follows the live reply; EventSource resumes with Last-Event-ID after a dropped connection. */
  follow() {
    if (this.source) return;
    const source = new EventSource(`/api/stream/${enc(this.chatId)}`);
    this.source = source;
    this.setGenerating(true);
    source.addEventListener("start", (e) => {
      const d = JSON.parse(e.data);
      this.announcer.replaceChildren();
      // The stream starts from the beginning of the reply: the text is rebuilt from scratch.
      this.live = this.view({ id: d.messageId, role: "assistant", replyTo: d.userMessageId, content: "", status: "streaming" });
      this.live.restart();
      this.refreshActions();
    });
    source.addEventListener("delta", (e) => {
      const d = JSON.parse(e.data);
      if (!this.live) return;
      if (d.type === "text") this.live.appendText(d.text);
      else if (d.type === "reasoning") this.live.appendReasoning(d.text);
      else if (d.type === "toolCall") this.live.appendToolCall(d);
      else if (d.type === "retry") this.say(`The model is being asked again (attempt ${d.attempt}): ${d.reason}`);
    });
    source.addEventListener("error", (e) => {
      if (e.data) {
        const d = JSON.parse(e.data);
        if (d.reload) {
          // The server lost track of the live reply: what was saved is in the history.
          this.finish();
          this.reload();
          return;
        }
        if (this.live) this.live.error = d.message;
      } else if (source.readyState === EventSource.CLOSED) {
        this.finish();
      } else {
        this.say("Connection lost, reconnecting\u2026");
      }
    });
    source.addEventListener("open", () => this.say(""));
    source.addEventListener("done", (e) => {
      const d = JSON.parse(e.data);
      const live = this.live;
      this.finish();
      if (live) live.finish(d.status);
    });
  }
  finish() {
    if (this.source) { this.source.close(); this.source = null; }
    this.live = null;
    this.setGenerating(false);
  }
}

const windows = {
  all: [],
  container: document.getElementById("windows"),
  /** Where the open windows are remembered: one list per signed-in user. */
  storeKey: STORE_KEY,
  save() { localStorage.setItem(this.storeKey, JSON.stringify(this.all.map((w) => w.chatId))); },
  open(chatId, title) {
    const existing = this.all.find((w) => w.chatId === chatId);
    if (existing) { existing.input.focus(); return existing; }
    const w = new ChatWindow(chatId, title);
    this.all.push(w);
    this.container.appendChild(w.el);
    this.save();
    w.open();
    return w;
  },
  close(w) {
    w.finish();
    if (w.observer) w.observer.disconnect();
    w.el.remove();
    this.all = this.all.filter((x) => x !== w);
    this.save();
  },
};

const chatList = document.getElementById("chat-list");
async function refreshChats() {
  try {
    const chats = await api("GET", "/api/chats");
    const placeholder = h("option", null, "Open a chat\u2026");
    placeholder.value = "";
    chatList.replaceChildren(placeholder);
    for (const c of chats) {
      const o = h("option", null, c.title || c.id);
      o.value = c.id;
      chatList.appendChild(o);
    }
    return chats;
  } catch (e) { return []; }
}
chatList.addEventListener("change", () => {
  const opt = chatList.selectedOptions[0];
  if (chatList.value) windows.open(chatList.value, opt.textContent);
  chatList.value = "";
});
document.getElementById("new-chat").addEventListener("click", async () => {
  try {
    // chatList holds a placeholder and one option per chat: its length numbers the new one.
    const chat = await api("POST", "/api/chats", { title: `Chat ${chatList.options.length}` });
    windows.open(chat.id, chat.title).input.focus();
    refreshChats();
  } catch (e) { alert(`Could not create a chat: ${e.message}`); }
});

(async () => {
  const me = await whoAmI();
  if (me.credential === "cookie") {
    document.getElementById("who").textContent = `Signed in as ${me.user}`;
    document.getElementById("account").hidden = false;
  }
  if (me.user !== "anonymous") windows.storeKey = `${STORE_KEY}.${me.user}`;
  const chats = await refreshChats();
  const titles = new Map(chats.map((c) => [c.id, c.title]));
  let saved = [];
  try { saved = JSON.parse(localStorage.getItem(windows.storeKey) || "[]"); } catch (e) { saved = []; }
  for (const id of saved) windows.open(id, titles.get(id));
  if (windows.all.length === 0) {
    for (let i = 0; i < 2; i++) {
      const chat = await api("POST", "/api/chats", { title: `Chat ${i + 1}` }).catch(() => null);
      if (chat) windows.open(chat.id, chat.title);
    }
    refreshChats();
  }
})();
