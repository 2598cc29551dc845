// The taskchat page: sign-in, the conversation list, the chat with its streamed answer
// and tool-call chips, and the task panel. State that must survive a reload (the token
// and the open conversation) lives in localStorage; everything else is fetched.

import { Api, ApiError, decodeToken, devLoginAvailable, devToken, sentence, whoAmI } from "./api.js";
import { describeFinished, describeRaw, describeStarted } from "./toolcalls.js";

const SESSION_KEY = "taskchat.session";
const conversationKey = (userId) => `taskchat.conversation.${userId}`;
/** The turn that was running when the page was left, so a reload can follow it again. */
const turnKey = (userId) => `taskchat.turn.${userId}`;
/** The server's limit on one message (the gateway answers 422 beyond it). */
const MAX_MESSAGE_CHARS = 4000;

const $ = (id) => document.getElementById(id);
/** Characters as the server counts them (code points, not UTF-16 units). */
const charCount = (text) => Array.from(text).length;

const ui = {
  signinView: $("signin-view"),
  appView: $("app-view"),
  account: $("account"),
  accountUser: $("account-user"),
  signOut: $("sign-out"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerClose: $("banner-close"),
  signinNotice: $("signin-notice"),
  devForm: $("dev-login"),
  devUser: $("dev-user"),
  divider: $("signin-or"),
  tokenForm: $("token-login"),
  tokenInput: $("token-input"),
  conversationList: $("conversation-list"),
  conversationsEmpty: $("conversations-empty"),
  conversationsMore: $("conversations-more"),
  newConversation: $("new-conversation"),
  chatTitle: $("chat-title"),
  messages: $("messages"),
  composer: $("composer"),
  input: $("composer-input"),
  send: $("send"),
  stop: $("stop"),
  counter: $("composer-counter"),
  tasksRefresh: $("tasks-refresh"),
  tasksStatus: $("tasks-status"),
  pending: $("tasks-pending"),
  done: $("tasks-done"),
  pendingCount: $("pending-count"),
  doneCount: $("done-count"),
};

const state = {
  /** @type {{token: string, userId: string, exp?: number} | null} */
  session: null,
  /** @type {Api | null} */
  api: null,
  conversationId: null,
  conversations: [],
  conversationsCursor: null,
  /** Changes made here that the read model may not show yet (it follows the log). */
  deletedConversations: new Set(),
  renamedConversations: new Map(),
  busy: false,
  /** The running turn: {requestId, conversationId, text, lastEventId}. */
  turn: null,
  expiryTimer: 0,
  /** Bumped on every sign-in/out and conversation switch, so late answers are dropped. */
  generation: 0,
};

// ---------------------------------------------------------------------------------
// Small DOM helpers

/** Creates an element; `attrs` keys starting with "on" become listeners. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function showBanner(message, kind = "error") {
  ui.bannerText.textContent = message;
  ui.banner.dataset.kind = kind;
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
  ui.bannerText.textContent = "";
}

const relativeTime = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

function whenText(iso) {
  const then = new Date(iso);
  if (Number.isNaN(then.getTime())) return "";
  const seconds = Math.round((then.getTime() - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  if (abs < 3600) return relativeTime.format(Math.round(seconds / 60), "minute");
  if (abs < 86_400) return relativeTime.format(Math.round(seconds / 3600), "hour");
  if (abs < 7 * 86_400) return relativeTime.format(Math.round(seconds / 86_400), "day");
  return then.toLocaleDateString();
}

function nearBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
}

function scrollToEnd(force = false) {
  if (force || nearBottom(ui.messages)) ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ---------------------------------------------------------------------------------
// Session

function loadSession() {
  try {
    const raw = localStorage.getItem(SESSION_KEY);
    if (!raw) return null;
    const saved = JSON.parse(raw);
    if (typeof saved.token !== "string" || typeof saved.userId !== "string") return null;
    return saved;
  } catch {
    return null;
  }
}

function isExpired(session) {
  return typeof session.exp === "number" && session.exp * 1000 <= Date.now();
}

/**
 * Starts a session with `token`: checks it has not run out, then asks the server
 * which user it is for (the server verifies it; that user is whoever the token names
 * by the deployment's rules, e.g. an identity provider's user claim).
 */
async function signIn(token) {
  const trimmed = token.trim();
  const claims = decodeToken(trimmed);
  if (isExpired({ exp: claims.exp })) throw new Error("This token has expired. Get a new one and try again.");
  const me = await whoAmI(trimmed);
  const session = { token: trimmed, userId: me.user_id, exp: claims.exp };
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  await enterApp(session);
}

/**
 * Ends the session and shows the sign-in form, with `notice` saying why. Use
 * `showSignIn`, which also offers dev login when the server has it.
 */
function signOut(notice = "", kind = "error") {
  state.generation += 1;
  clearTimeout(state.expiryTimer);
  localStorage.removeItem(SESSION_KEY);
  state.session = null;
  state.api = null;
  state.busy = false;
  state.conversationId = null;
  state.conversations = [];
  state.conversationsCursor = null;
  // Nothing of this user stays on the page for the next one.
  ui.conversationList.replaceChildren();
  ui.messages.replaceChildren();
  ui.pending.replaceChildren();
  ui.done.replaceChildren();
  ui.pendingCount.textContent = "";
  ui.doneCount.textContent = "";
  setBusy(false);
  ui.account.hidden = true;
  ui.appView.hidden = true;
  ui.signinView.hidden = false;
  hideBanner();
  ui.signinNotice.textContent = notice;
  ui.signinNotice.dataset.kind = kind;
  ui.signinNotice.hidden = !notice;
  ui.tokenInput.value = "";
  if (notice) ui.signinNotice.focus();
  document.title = "Sign in · taskchat";
}

/** Handles an error of any request: sign-in errors end the session, others are shown. */
function reportError(error, where) {
  if (error instanceof ApiError && error.needsSignIn) {
    showSignIn(error.message);
    return true;
  }
  const message = error instanceof Error ? error.message : String(error);
  showBanner(where ? `${where}: ${message}` : message);
  return false;
}

async function showSignIn(notice = "", kind = "error") {
  signOut(notice, kind);
  ui.devForm.hidden = true;
  ui.divider.hidden = true;
  const available = await devLoginAvailable();
  if (state.session) return; // signed in meanwhile (pasted token)
  ui.devForm.hidden = !available;
  ui.divider.hidden = !available;
  (available ? ui.devUser : ui.tokenInput).focus({ preventScroll: true });
  if (notice) ui.signinNotice.focus();
}

function scheduleExpiry(session) {
  clearTimeout(state.expiryTimer);
  if (typeof session.exp !== "number") return;
  // setTimeout holds at most 2^31-1 ms; a later expiry is caught by the 401 instead.
  const delay = Math.min(session.exp * 1000 - Date.now(), 2 ** 31 - 1);
  state.expiryTimer = setTimeout(
    () => showSignIn("Your session has expired. Please sign in again."),
    Math.max(delay, 0),
  );
}

async function enterApp(session) {
  state.generation += 1;
  state.session = session;
  state.api = new Api(session.token, session.userId);
  scheduleExpiry(session);
  ui.signinView.hidden = true;
  ui.signinNotice.hidden = true;
  ui.appView.hidden = false;
  ui.account.hidden = false;
  ui.accountUser.textContent = session.userId;
  document.title = "taskchat";
  hideBanner();

  const saved = localStorage.getItem(conversationKey(session.userId));
  const api = state.api;
  await Promise.all([
    refreshConversations(),
    refreshTasks(),
    saved ? openConversation(saved, { restoring: true }) : Promise.resolve(startNewConversation()),
  ]);
  if (api === state.api) ui.input.focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------------
// Conversations

function renderConversations() {
  ui.conversationList.replaceChildren(
    ...state.conversations.map((c) => {
      const current = c.conversation_id === state.conversationId;
      const title = c.title || "Untitled conversation";
      return h(
        "li",
        { class: "conversation-item", dataset: { conversationId: c.conversation_id } },
        h(
          "button",
          {
            type: "button",
            class: "conversation",
            "aria-current": current ? "true" : null,
            disabled: state.busy,
            dataset: { conversationId: c.conversation_id },
            onclick: () => openConversation(c.conversation_id),
          },
          h("span", { class: "conversation-title" }, title),
          h(
            "span",
            { class: "conversation-meta" },
            `${c.message_count} message${c.message_count === 1 ? "" : "s"} · ${whenText(c.updated_at)}`,
          ),
        ),
        h(
          "span",
          { class: "conversation-actions" },
          h(
            "button",
            {
              type: "button",
              class: "btn btn-ghost btn-small rename",
              "aria-label": `Rename “${title}”`,
              disabled: state.busy,
              onclick: (event) => startRename(event.currentTarget.closest("li"), c),
            },
            "Rename",
          ),
          h(
            "button",
            {
              type: "button",
              class: "btn btn-ghost btn-small delete",
              "aria-label": `Delete “${title}”`,
              disabled: state.busy,
              onclick: (event) => deleteConversation(event.currentTarget, c),
            },
            "Delete",
          ),
        ),
      );
    }),
  );
  ui.conversationsEmpty.hidden = state.conversations.length > 0;
  ui.conversationsMore.hidden = !state.conversationsCursor;
}

/** Turns a conversation's entry into a title field; Enter saves, Escape cancels. */
function startRename(item, conversation) {
  const input = h("input", {
    type: "text",
    class: "rename-input",
    value: conversation.title || "",
    maxlength: "200",
    "aria-label": "New title",
    required: true,
  });
  const form = h(
    "form",
    { class: "rename-form" },
    input,
    h("button", { type: "submit", class: "btn btn-primary btn-small" }, "Save"),
    h("button", { type: "button", class: "btn btn-ghost btn-small", onclick: () => renderConversations() }, "Cancel"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = input.value.trim();
    if (!title || !state.api) return;
    try {
      await state.api.rename(conversation.conversation_id, title);
      conversation.title = title;
      state.renamedConversations.set(conversation.conversation_id, title);
      renderConversations();
      updateChatTitle();
      await refreshConversations();
    } catch (error) {
      reportError(error, "The conversation could not be renamed");
    }
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") renderConversations();
  });
  item.replaceChildren(form);
  input.focus();
  input.select();
}

/** Deletes a conversation on the second click (the first asks to confirm). */
async function deleteConversation(button, conversation) {
  if (button.dataset.confirm !== "true") {
    button.dataset.confirm = "true";
    button.textContent = "Delete?";
    button.classList.add("danger");
    return;
  }
  if (!state.api) return;
  try {
    await state.api.deleteConversation(conversation.conversation_id);
  } catch (error) {
    // Gone already: the list catches up below.
    if (!(error instanceof ApiError && error.status === 404)) {
      reportError(error, "The conversation could not be deleted");
      return;
    }
  }
  state.deletedConversations.add(conversation.conversation_id);
  state.conversations = state.conversations.filter((c) => c.conversation_id !== conversation.conversation_id);
  if (state.conversationId === conversation.conversation_id) startNewConversation();
  renderConversations();
  await refreshConversations();
}

/** Loads the conversation list (or its next page); false when that failed. */
async function refreshConversations({ more = false } = {}) {
  const api = state.api;
  if (!api) return false;
  try {
    const page = await api.conversations(more ? state.conversationsCursor : undefined);
    if (api !== state.api) return false;
    const items = (page.items || [])
      .filter((c) => !state.deletedConversations.has(c.conversation_id))
      .map((c) => {
        const title = state.renamedConversations.get(c.conversation_id);
        if (title === undefined) return c;
        if (title === c.title) state.renamedConversations.delete(c.conversation_id);
        return { ...c, title };
      });
    if (more) {
      const known = new Set(state.conversations.map((c) => c.conversation_id));
      state.conversations.push(...items.filter((c) => !known.has(c.conversation_id)));
    } else {
      state.conversations = items;
    }
    state.conversationsCursor = page.next_cursor || null;
    renderConversations();
    updateChatTitle();
    return true;
  } catch (error) {
    if (api === state.api) reportError(error, "Conversations could not be loaded");
    return false;
  }
}

function updateChatTitle(fallback) {
  const current = state.conversations.find((c) => c.conversation_id === state.conversationId);
  const title = current?.title || fallback || (state.conversationId ? "Conversation" : "New conversation");
  ui.chatTitle.textContent = title;
}

function rememberConversation(id) {
  state.conversationId = id;
  const key = conversationKey(state.session.userId);
  if (id) localStorage.setItem(key, id);
  else localStorage.removeItem(key);
  renderConversations();
}

function welcome() {
  const examples = ["add a task to buy milk", "what's still open?", "mark 1 done"];
  return h(
    "div",
    { class: "welcome" },
    h("h3", {}, "What needs doing?"),
    h("p", {}, "Tell the assistant about your tasks in plain words. It keeps your task list up to date as you go."),
    h(
      "ul",
      { class: "examples", "aria-label": "Examples" },
      examples.map((text) =>
        h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: "example",
              onclick: () => {
                ui.input.value = text;
                autoGrow();
                ui.input.focus();
              },
            },
            text,
          ),
        ),
      ),
    ),
  );
}

function startNewConversation() {
  if (state.busy) return;
  state.generation += 1;
  if (state.session) rememberConversation(null);
  ui.messages.replaceChildren(welcome());
  updateChatTitle();
}

async function openConversation(id, { restoring = false } = {}) {
  if (state.busy || !state.api) return;
  const api = state.api;
  state.generation += 1;
  const generation = state.generation;
  rememberConversation(id);
  updateChatTitle();
  ui.messages.replaceChildren(h("p", { class: "loading", role: "status" }, "Loading the conversation…"));
  ui.messages.setAttribute("aria-busy", "true");
  try {
    const messages = await api.messages(id);
    if (generation !== state.generation) return;
    const nodes = messages.map(renderStoredMessage);
    ui.messages.replaceChildren(...(nodes.length ? nodes : [welcome()]));
    if (!state.conversations.some((c) => c.conversation_id === id)) {
      const first = messages.find((m) => m.role === "user");
      updateChatTitle(first?.content);
    }
    scrollToEnd(true);
    updateRegenerate();
    if (!restoring) ui.input.focus({ preventScroll: true });
    const running = savedTurn(state.session.userId);
    if (restoring && running && running.conversationId === id) {
      // Follow the turn that was running when the page was left, to its end.
      ui.messages.querySelector(`.msg[data-request-id="${CSS.escape(running.requestId)}"]:not(.msg-user)`)?.remove();
      resumeTurn(running);
    }
  } catch (error) {
    if (generation !== state.generation) return;
    if (error instanceof ApiError && error.status === 404) {
      // Gone or never ours: start afresh rather than showing a broken conversation.
      startNewConversation();
      if (!restoring) showBanner("That conversation was not found.");
      return;
    }
    ui.messages.replaceChildren(welcome());
    reportError(error, "The conversation could not be loaded");
  } finally {
    if (generation === state.generation) ui.messages.removeAttribute("aria-busy");
  }
}

// ---------------------------------------------------------------------------------
// Messages and tool-call chips

function chip({ text, kind }, raw) {
  return h("li", { class: `chip chip-${kind}`, title: raw }, h("span", { class: "chip-dot", "aria-hidden": "true" }), text);
}

function finishedChip(call) {
  return chip(describeFinished(call.name, call.arguments, call.result), describeRaw(call.name, call.arguments, call.result));
}

function messageNode(role, { text = "", toolCalls = [] } = {}) {
  const label = role === "user" ? "You" : role === "error" ? "Problem" : "Assistant";
  const chips = h("ul", { class: "chips", "aria-label": "Tool calls" }, toolCalls.map(finishedChip));
  chips.hidden = toolCalls.length === 0;
  const bubble = h("div", { class: "bubble" }, text);
  return h(
    "article",
    { class: `msg msg-${role}`, "aria-label": label },
    h("span", { class: "msg-author" }, label),
    chips,
    bubble,
  );
}

function renderStoredMessage(message) {
  const role = message.role === "user" || message.role === "error" ? message.role : "assistant";
  const node = messageNode(role, { text: message.content, toolCalls: message.tool_calls || [] });
  if (message.request_id) node.dataset.requestId = message.request_id;
  return node;
}

/** The assistant's message of a turn in progress: fills in as events arrive. */
class LiveAnswer {
  constructor() {
    this.node = messageNode("assistant");
    this.node.setAttribute("aria-busy", "true");
    this.node.dataset.deltas = "0";
    this.chips = this.node.querySelector(".chips");
    this.bubble = this.node.querySelector(".bubble");
    this.typing = h(
      "span",
      { class: "typing" },
      h("span", { class: "visually-hidden" }, "The assistant is writing"),
      h("span", { class: "typing-dots", "aria-hidden": "true" }, h("i"), h("i"), h("i")),
    );
    this.bubble.append(this.typing);
    this.text = "";
    this.deltas = 0;
    /** @type {Map<string, HTMLElement>} */
    this.chipByCall = new Map();
    /** The last result of each task this turn touched, by task number. */
    this.effects = new Map();
    this.settled = false;
    /** Answered (not failed): the final answer came. */
    this.answered = false;
    /** Paused before a call that waits for the person's approval. */
    this.waiting = false;
  }

  /** Shows the call the turn waits on, with Approve and Decline. */
  askApproval(approval, onDecision) {
    this.waiting = true;
    this.node.dataset.waiting = "true";
    this.typing.remove();
    this.node.removeAttribute("aria-busy");
    this.node.querySelector(".approval")?.remove();
    // "deleting #1…" names the call; the ellipsis is for calls still running.
    const what = describeStarted(approval.name, approval.arguments).text.replace(/…$/, "");
    // Nothing written yet: no empty bubble above the question.
    this.bubble.hidden = !this.text;
    this.node.append(
      h(
        "div",
        { class: "approval", role: "group", "aria-label": "Approval needed" },
        h("p", {}, `The assistant asks to run ${approval.name} (${what}). Allow it?`),
        h("button", { type: "button", class: "btn btn-primary btn-small approve", onclick: () => onDecision(true) }, "Approve"),
        h("button", { type: "button", class: "btn btn-small decline", onclick: () => onDecision(false) }, "Decline"),
      ),
    );
  }

  deciding(approve) {
    this.bubble.hidden = false;
    const box = this.node.querySelector(".approval");
    if (box) box.replaceChildren(h("p", {}, approve ? "Approved. Running it…" : "Declined."));
    this.bubble.append(this.typing);
    this.node.setAttribute("aria-busy", "true");
  }

  /** Shows the calls a turn has run so far, as an answer lists them. */
  chipsFrom(calls) {
    this.chips.replaceChildren(...calls.map(finishedChip));
    this.chips.hidden = calls.length === 0;
  }

  delta(text) {
    this.deltas += 1;
    this.node.dataset.deltas = String(this.deltas);
    this.text += text;
    this.bubble.textContent = this.text;
  }

  started({ call_id, name, arguments: args }) {
    const node = chip(describeStarted(name, args), describeRaw(name, args));
    this.putChip(call_id, node);
  }

  finished(call) {
    this.putChip(call.call_id, finishedChip(call));
    this.noteEffect(call.result);
  }

  noteEffect(result) {
    if (result && result.task_id !== undefined && result.error === undefined && typeof result.status === "string") {
      this.effects.set(String(result.task_id), result);
    }
  }

  putChip(callId, node) {
    const existing = callId ? this.chipByCall.get(callId) : undefined;
    if (existing) existing.replaceWith(node);
    else this.chips.append(node);
    if (callId) this.chipByCall.set(callId, node);
    this.chips.hidden = false;
  }

  /** The gateway's final answer: the whole text and every call, authoritative. */
  final(answer) {
    this.node.querySelector(".approval")?.remove();
    this.waiting = false;
    delete this.node.dataset.waiting;
    this.settled = true;
    this.answered = true;
    this.bubble.hidden = false;
    this.text = answer.response || "";
    this.bubble.textContent = this.text || "(no reply)";
    const calls = answer.tool_calls || [];
    if (calls.length !== this.chipByCall.size || this.chips.querySelector(".chip-pending")) {
      // Events were missed (or none were sent): show the calls as the answer has them.
      this.chips.replaceChildren(...calls.map(finishedChip));
    }
    for (const call of calls) this.noteEffect(call.result);
    this.chips.hidden = calls.length === 0 && this.chips.children.length === 0;
    this.done();
  }

  fail(message) {
    this.node.querySelector(".approval")?.remove();
    this.waiting = false;
    delete this.node.dataset.waiting;
    this.settled = true;
    this.bubble.hidden = false;
    this.node.classList.remove("msg-assistant");
    this.node.classList.add("msg-error");
    this.node.querySelector(".msg-author").textContent = "Problem";
    this.node.setAttribute("aria-label", "Problem");
    for (const pending of this.chips.querySelectorAll(".chip-pending")) pending.remove();
    this.chips.hidden = this.chips.children.length === 0;
    this.bubble.replaceChildren(h("p", {}, message));
    if (this.text) this.bubble.append(h("p", { class: "partial" }, `Partial answer: ${this.text}`));
    this.done();
  }

  done() {
    this.typing.remove();
    this.node.removeAttribute("aria-busy");
  }
}

// ---------------------------------------------------------------------------------
// Sending a message

function setBusy(busy) {
  state.busy = busy;
  document.body.dataset.turn = busy ? "running" : "idle";
  // Stop takes Send's place while a turn runs.
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.stop.disabled = false;
  ui.newConversation.disabled = busy;
  for (const button of ui.conversationList.querySelectorAll("button")) button.disabled = busy;
  updateSendButton();
  updateRegenerate();
}

/** Send is off while a turn runs and while the message is over the length limit. */
function updateSendButton() {
  ui.send.disabled = state.busy || charCount(ui.input.value) > MAX_MESSAGE_CHARS;
}

/** Remembers the running turn (or forgets it), for a reload to follow it again. */
function saveTurn(turn) {
  state.turn = turn;
  if (!state.session) return;
  const key = turnKey(state.session.userId);
  if (turn) localStorage.setItem(key, JSON.stringify(turn));
  else localStorage.removeItem(key);
}

function savedTurn(userId) {
  try {
    const saved = JSON.parse(localStorage.getItem(turnKey(userId)) || "null");
    return saved && typeof saved.requestId === "string" ? saved : null;
  } catch {
    return null;
  }
}

async function sendMessage() {
  const text = ui.input.value.trim();
  if (!text || state.busy || !state.api) return;
  const length = charCount(text);
  if (length > MAX_MESSAGE_CHARS) {
    showBanner(`A message can be at most ${MAX_MESSAGE_CHARS.toLocaleString()} characters; this one has ${length.toLocaleString()}.`);
    return;
  }
  ui.messages.querySelector(".welcome")?.remove();
  ui.messages.append(messageNode("user", { text }));
  ui.input.value = "";
  autoGrow();
  const api = state.api;
  const ok = await runTurn((onEvent, signal) => api.chatStream(text, state.conversationId, onEvent, signal), {
    text,
  });
  // A turn that failed keeps what the person wrote, to send again.
  if (!ok && api === state.api && !ui.input.value) {
    ui.input.value = text;
    autoGrow();
  }
}

/** Answers the conversation's last message again; the earlier answer leaves the page. */
async function regenerate() {
  if (state.busy || !state.api || !state.conversationId) return;
  const last = lastAnswerNode();
  const conversationId = state.conversationId;
  const api = state.api;
  last?.remove();
  await runTurn((onEvent, signal) => api.regenerateStream(conversationId, onEvent, signal), {});
}

/** Follows a turn that was running when the page was reloaded. */
function resumeTurn(turn) {
  const api = state.api;
  if (turn.text && !ui.messages.querySelector(`[data-request-id="${CSS.escape(turn.requestId)}"]`)) {
    ui.messages.querySelector(".welcome")?.remove();
    ui.messages.append(messageNode("user", { text: turn.text }));
  }
  // From its first event: the page has none of its answer any more.
  return runTurn((onEvent, signal) => api.followTurn(turn.requestId, "", onEvent, signal), {
    text: turn.text,
    requestId: turn.requestId,
  });
}

/**
 * Runs one turn on the page: `start(onEvent, signal)` opens its event stream; the
 * answer fills in as events arrive. A stream that drops is followed again from the
 * last event seen (`Last-Event-ID`). Resolves with whether the turn was answered.
 */
async function runTurn(start, { text = "", requestId = null }) {
  hideBanner();
  const api = state.api;
  const generation = state.generation;
  const answer = new LiveAnswer();
  ui.messages.append(answer.node);
  scrollToEnd(true);
  setBusy(true);

  let conversationId = state.conversationId;
  /** The turn that is still running on the server although this request gave up on it. */
  let stillRunning = null;
  let lastEventId = "";
  const onEvent = (event, data, id) => {
    if (generation !== state.generation) return;
    if (id) {
      lastEventId = id;
      if (state.turn) saveTurn({ ...state.turn, lastEventId: id });
    }
    if (event === "accepted") {
      // Remember it now: a reload while the answer streams still finds the turn.
      conversationId = data.conversation_id || conversationId;
      requestId = data.request_id || requestId;
      if (conversationId && conversationId !== state.conversationId) rememberConversation(conversationId);
      saveTurn({ requestId, conversationId, text, lastEventId });
    } else if (event === "delta" && typeof data?.text === "string") answer.delta(data.text);
    else if (event === "tool_call_started") answer.started(data);
    else if (event === "tool_call_finished") answer.finished(data);
    else if (event === "approval_required") answer.askApproval(data, (approve) => decide(answer, requestId, data, approve));
    else if (event === "final") {
      answer.final(data);
      conversationId = data.conversation_id || conversationId;
    } else if (event === "error") {
      const error = data?.error || {};
      conversationId = error.conversation_id || conversationId;
      if (error.code === "reply_timeout" || error.code === "shutting_down") stillRunning = error.request_id;
      answer.fail(error.message ? sentence(error.message) : "The assistant could not answer this message.");
    }
    scrollToEnd();
  };
  if (requestId) saveTurn({ requestId, conversationId, text, lastEventId });
  const stopping = new AbortController();
  state.stopStream = stopping;
  try {
    await start(onEvent, stopping.signal);
    // Dropped before its end: follow the same turn again from the last event seen.
    for (let retry = 0; retry < 3 && !answer.settled && !answer.waiting && requestId && !stopping.signal.aborted; retry += 1) {
      if (generation !== state.generation) break;
      await sleep(500 * (retry + 1));
      await api.followTurn(requestId, lastEventId, onEvent, stopping.signal).catch(() => {});
    }
    if (!answer.settled && !answer.waiting) {
      stillRunning = requestId;
      answer.fail("The connection closed before the answer was complete. It will appear in the conversation history once it is ready.");
    }
  } catch (error) {
    if (error instanceof ApiError && error.needsSignIn) {
      showSignIn(error.message);
      return false;
    }
    if (error instanceof ApiError && error.conversationId) conversationId = error.conversationId;
    if (error instanceof ApiError && (error.code === "reply_timeout" || error.code === "shutting_down")) {
      stillRunning = error.requestId;
    } else if (requestId) {
      // The connection failed after the server accepted the turn, which goes on there.
      stillRunning = requestId;
    }
    answer.fail(error instanceof Error ? error.message : String(error));
    if (error instanceof ApiError && error.code === "conversation_not_found") conversationId = null;
  } finally {
    if (state.stopStream === stopping) state.stopStream = null;
    // A turn still running elsewhere, or paused for approval, stays remembered: a
    // reload follows it again (and shows the approval again).
    if (api === state.api && generation === state.generation && !stillRunning && !answer.waiting) saveTurn(null);
    if (api === state.api) setBusy(false);
  }
  if (api !== state.api || generation !== state.generation) return answer.answered;
  if (conversationId !== state.conversationId) rememberConversation(conversationId);
  scrollToEnd();
  updateRegenerate();
  ui.input.focus({ preventScroll: true });
  await settleAfterTurn(api, conversationId, answer.effects);
  if (stillRunning && conversationId) awaitLateAnswer(conversationId, stillRunning);
  return answer.answered;
}

/** The person's decision on the call a turn waits on; the answer continues the turn. */
async function decide(answer, requestId, approval, approve) {
  const api = state.api;
  if (!api || state.busy) return;
  answer.deciding(approve);
  setBusy(true);
  const conversationId = state.conversationId;
  saveTurn({ requestId, conversationId, text: "", lastEventId: "" });
  try {
    const next = await api.decide(requestId, approval.approval_id, approve);
    if (api !== state.api) return;
    if (next.pending_approval) {
      answer.chipsFrom(next.tool_calls || []);
      answer.askApproval(next.pending_approval, (again) => decide(answer, requestId, next.pending_approval, again));
    } else {
      answer.final(next);
      saveTurn(null);
    }
  } catch (error) {
    if (error instanceof ApiError && error.needsSignIn) {
      showSignIn(error.message);
      return;
    }
    answer.fail(error instanceof Error ? error.message : String(error));
  } finally {
    if (api === state.api) setBusy(false);
  }
  if (api !== state.api) return;
  updateRegenerate();
  await settleAfterTurn(api, state.conversationId, answer.effects);
}

/** Stops the running turn on the server; its stream then ends with `cancelled`. */
async function stopTurn() {
  const requestId = state.turn?.requestId;
  if (!requestId || !state.api) return;
  ui.stop.disabled = true;
  try {
    await state.api.cancel(requestId);
  } catch (error) {
    // 409: it ended meanwhile, and its answer is on the way.
    if (!(error instanceof ApiError && error.status === 409)) reportError(error, "The turn could not be stopped");
    ui.stop.disabled = false;
  }
}

/** The last answer (or problem) on the page, the one Regenerate replaces. */
function lastAnswerNode() {
  const last = ui.messages.querySelector(".msg:last-of-type");
  return last && !last.classList.contains("msg-user") ? last : null;
}

/** Offers Regenerate on the last answer of a conversation, when no turn runs. */
function updateRegenerate() {
  for (const old of ui.messages.querySelectorAll(".regenerate")) old.remove();
  const last = lastAnswerNode();
  if (state.busy || !state.conversationId || !last || last.dataset.waiting === "true") return;
  last.append(
    h("button", { type: "button", class: "btn btn-ghost btn-small regenerate", onclick: regenerate }, "Regenerate"),
  );
}

/** Whether `tasks` shows every change a turn reported. */
function reflects(tasks, effects) {
  const byId = new Map(tasks.map((task) => [String(task.id), task]));
  for (const [id, result] of effects) {
    const task = byId.get(id);
    if (result.status === "deleted") {
      if (task) return false;
    } else if (!task) {
      return false;
    } else if (result.status === "completed" && !task.completed) {
      return false;
    } else if (result.status === "updated" && result.title && task.title !== result.title) {
      return false;
    }
  }
  return true;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Refreshes the task panel and the conversation list after a turn. The read models
 * follow the event log a moment behind the answer, so a first read may not show the
 * turn yet: read again, a few times, until it does.
 */
async function settleAfterTurn(api, conversationId, effects) {
  const shown = ui.messages.querySelectorAll(".msg-user, .msg-assistant").length;
  let tasksDone = false;
  let conversationsDone = false;
  for (const delay of [0, 300, 700, 1500, 3000]) {
    if (delay) await sleep(delay);
    if (api !== state.api) return;
    const reads = [];
    if (!tasksDone) {
      reads.push(
        refreshTasks(new Set(effects.keys())).then((tasks) => {
          tasksDone = !tasks || reflects(tasks, effects);
        }),
      );
    }
    if (!conversationsDone) {
      reads.push(
        refreshConversations().then((ok) => {
          const listed = state.conversations.find((c) => c.conversation_id === conversationId);
          conversationsDone = !ok || !conversationId || (listed !== undefined && listed.message_count >= shown);
        }),
      );
    }
    await Promise.all(reads);
    if (tasksDone && conversationsDone) return;
  }
}

/**
 * After a timeout the server still finishes the turn and records it; poll the history
 * for a while and show the conversation again once the answer is there.
 */
async function awaitLateAnswer(conversationId, requestId) {
  const api = state.api;
  for (const delay of [3_000, 5_000, 10_000, 15_000, 30_000]) {
    await new Promise((resolve) => setTimeout(resolve, delay));
    if (api !== state.api || state.conversationId !== conversationId) return;
    let messages;
    try {
      messages = await api.messages(conversationId);
    } catch {
      continue;
    }
    const answered = messages.some((m) => m.request_id === requestId && m.role !== "user");
    if (!answered) continue;
    if (state.busy || api !== state.api || state.conversationId !== conversationId) return;
    ui.messages.replaceChildren(...messages.map(renderStoredMessage));
    scrollToEnd(true);
    showBanner("The assistant has finished answering your earlier message.", "info");
    await Promise.all([refreshConversations(), refreshTasks()]);
    return;
  }
}

function autoGrow() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
  const length = charCount(ui.input.value);
  ui.counter.hidden = length < MAX_MESSAGE_CHARS * 0.8;
  ui.counter.textContent = `${length.toLocaleString()} / ${MAX_MESSAGE_CHARS.toLocaleString()}`;
  ui.counter.classList.toggle("over", length > MAX_MESSAGE_CHARS);
  updateSendButton();
}

// ---------------------------------------------------------------------------------
// Tasks

function taskNode(task, changed) {
  return h(
    "li",
    {
      class: `task${task.completed ? " task-done" : ""}${changed ? " task-changed" : ""}`,
      dataset: { taskId: String(task.id), completed: String(task.completed) },
    },
    h("span", { class: "task-check", "aria-hidden": "true" }),
    h(
      "div",
      { class: "task-body" },
      h(
        "p",
        { class: "task-title" },
        h("span", { class: "task-number" }, `#${task.id}`),
        " ",
        h("span", { class: "task-text" }, task.title),
        task.completed ? h("span", { class: "visually-hidden" }, " (done)") : null,
      ),
      task.description ? h("p", { class: "task-description" }, task.description) : null,
    ),
  );
}

function renderTaskList(list, tasks, emptyText, changed) {
  list.replaceChildren(
    ...(tasks.length
      ? tasks.map((task) => taskNode(task, changed.has(String(task.id))))
      : [h("li", { class: "empty" }, emptyText)]),
  );
}

/** Loads the task panel; resolves with the tasks, or null when that failed. */
async function refreshTasks(changed = new Set()) {
  const api = state.api;
  if (!api) return null;
  ui.tasksRefresh.disabled = true;
  ui.tasksStatus.textContent = "Updating…";
  try {
    const tasks = await api.tasks();
    if (api !== state.api) return null;
    tasks.sort((a, b) => a.id - b.id);
    const pending = tasks.filter((t) => !t.completed);
    const done = tasks.filter((t) => t.completed);
    renderTaskList(ui.pending, pending, "Nothing pending.", changed);
    renderTaskList(ui.done, done, "Nothing done yet.", changed);
    ui.pendingCount.textContent = String(pending.length);
    ui.doneCount.textContent = String(done.length);
    ui.tasksStatus.textContent = `${pending.length} pending, ${done.length} done`;
    return tasks;
  } catch (error) {
    if (api !== state.api) return null;
    ui.tasksStatus.textContent = "Tasks could not be loaded.";
    reportError(error, "Tasks could not be loaded");
    return null;
  } finally {
    if (api === state.api) ui.tasksRefresh.disabled = false;
  }
}

// ---------------------------------------------------------------------------------
// Wiring

ui.devForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const userId = ui.devUser.value.trim();
  if (!userId) return;
  const button = ui.devForm.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const minted = await devToken(userId);
    await signIn(minted.token);
  } catch (error) {
    ui.signinNotice.textContent =
      error instanceof ApiError && error.status === 404
        ? "Developer sign-in is switched off on this server. Sign in with a token instead."
        : error.message;
    ui.signinNotice.dataset.kind = "error";
    ui.signinNotice.hidden = false;
  } finally {
    button.disabled = false;
  }
});

ui.tokenForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = ui.tokenInput.value.trim().replace(/^Bearer\s+/i, "");
  if (!token) return;
  try {
    await signIn(token);
  } catch (error) {
    ui.signinNotice.textContent = error.message;
    ui.signinNotice.dataset.kind = "error";
    ui.signinNotice.hidden = false;
    ui.tokenInput.focus();
  }
});

ui.signOut.addEventListener("click", () => showSignIn("You have signed out.", "info"));
ui.bannerClose.addEventListener("click", hideBanner);
ui.newConversation.addEventListener("click", () => {
  startNewConversation();
  ui.input.focus();
});
ui.conversationsMore.addEventListener("click", () => refreshConversations({ more: true }));
ui.tasksRefresh.addEventListener("click", () => refreshTasks());

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});
ui.input.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition is neither.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});
ui.input.addEventListener("input", autoGrow);
ui.stop.addEventListener("click", stopTurn);

// Another tab signed out or in: follow it rather than sending with a stale token.
window.addEventListener("storage", (event) => {
  if (event.key !== SESSION_KEY) return;
  const session = loadSession();
  if (!session) showSignIn("You signed out in another tab.", "info");
  else if (session.token !== state.session?.token) enterApp(session);
});

async function start() {
  const session = loadSession();
  if (!session) return showSignIn();
  if (isExpired(session)) return showSignIn("Your session has expired. Please sign in again.");
  try {
    await enterApp(session);
  } catch (error) {
    reportError(error);
  }
}

start();
