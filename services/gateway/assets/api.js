// The gateway's HTTP API as the page uses it: JSON requests with the bearer token,
// errors turned into ApiError with a sentence fit to show, and a chat turn's events
// (server-sent events, each with an id) read with fetch: EventSource can neither POST
// nor send the bearer token.

/** How long an ordinary request may take before the page gives up on it. */
const REQUEST_TIMEOUT_MS = 20_000;
/** How long a chat stream may stay silent (no event, no keep-alive) before it is abandoned. */
const STREAM_IDLE_TIMEOUT_MS = 120_000;

/** A failed request, with a message written for the person using the page. */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status, or 0 when no answer came (network, timeout).
   * @param {string} code The gateway's error code, or a local one (`network`, `timeout`).
   * @param {string} message What to show.
   * @param {{requestId?: string, conversationId?: string}} [extra]
   */
  constructor(status, code, message, extra = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.requestId = extra.requestId;
    this.conversationId = extra.conversationId;
  }

  /** The token is missing, invalid or expired: the person has to sign in again. */
  get needsSignIn() {
    return this.status === 401;
  }
}

/** Words for a status when the body says nothing usable. */
function fallbackMessage(status) {
  if (status === 401) return "Your session is no longer valid. Please sign in again.";
  if (status === 403) return "This token does not allow acting for this user.";
  if (status === 404) return "That was not found.";
  if (status === 413) return "That message is too large.";
  if (status === 422) return "The server could not accept that input.";
  if (status === 502) return "The assistant could not answer right now. Please try again.";
  if (status === 503) return "The service is unavailable right now. Please try again shortly.";
  if (status === 504) return "The assistant is taking too long to answer. Its reply will appear in the conversation history.";
  if (status >= 500) return "Something went wrong on the server. Please try again.";
  return `The request failed (HTTP ${status}).`;
}

/** The server's messages are lowercase clauses; the page shows them as sentences. */
export function sentence(text) {
  const trimmed = String(text).trim();
  if (!trimmed) return trimmed;
  const capital = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?)]$/.test(capital) ? capital : `${capital}.`;
}

/** Builds an ApiError from the gateway's `{"error": {"code", "message", …}}` body. */
export function errorFromBody(status, body) {
  const detail = body && typeof body === "object" ? body.error : undefined;
  if (detail && typeof detail === "object") {
    let message = typeof detail.message === "string" && detail.message ? sentence(detail.message) : fallbackMessage(status);
    if (detail.code === "expired_token") message = "Your session has expired. Please sign in again.";
    if (detail.code === "invalid_token") message = "The server did not accept your sign-in token. Please sign in again.";
    return new ApiError(status, String(detail.code || "error"), message, {
      requestId: detail.request_id,
      conversationId: detail.conversation_id,
    });
  }
  return new ApiError(status, "error", fallbackMessage(status));
}

/** Turns a fetch rejection into an ApiError. */
function transportError(error, timedOut) {
  if (timedOut || (error && error.name === "TimeoutError")) {
    return new ApiError(0, "timeout", "The server did not answer in time. Please try again.");
  }
  if (error && error.name === "AbortError") {
    return new ApiError(0, "aborted", "The request was cancelled.");
  }
  return new ApiError(0, "network", "Cannot reach the taskchat server. Check your connection and try again.");
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * Sends one JSON request. Resolves with the parsed body of a 2xx answer; rejects with
 * an ApiError otherwise.
 */
async function requestJson(method, path, { token, body, timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
      cache: "no-store",
    });
  } catch (error) {
    throw transportError(error, false);
  }
  const json = await readJson(response);
  if (!response.ok) throw errorFromBody(response.status, json);
  return json;
}

/**
 * Asks for a development token. Resolves with `{token, user_id, expires_in}`; rejects
 * with an ApiError (status 404 when the server has dev login switched off).
 */
export function devToken(userId) {
  return requestJson("POST", "/api/dev/token", { body: { user_id: userId } });
}

/**
 * Whether the server offers dev login. The route answers 404 when `AUTH_DEV_LOGIN` is
 * off; an empty user id is refused with 4xx when it is on, so nothing is minted.
 */
export async function devLoginAvailable() {
  try {
    await requestJson("POST", "/api/dev/token", { body: { user_id: "" }, timeoutMs: 5_000 });
    return true;
  } catch (error) {
    return !(error instanceof ApiError) || (error.status !== 404 && error.status !== 405 && error.status !== 0);
  }
}

/**
 * Reads the claims of a JWT without verifying it (the server verifies; the page only
 * needs to know when it runs out). Which user a token is for is the server's answer
 * (`whoAmI`): an identity provider may put the user in a claim other than `sub`.
 * @returns {{exp?: number}}
 */
export function decodeToken(token) {
  const parts = token.trim().split(".");
  if (parts.length !== 3) throw new Error("This is not a JWT: it should have three parts separated by dots.");
  let claims;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    claims = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new Error("This token cannot be read: its middle part is not base64url JSON.");
  }
  if (!claims || typeof claims !== "object") {
    throw new Error("This token cannot be read: its middle part is not a JSON object.");
  }
  return claims;
}

/**
 * Asks the server which user `token` signs in as. Resolves with `{user_id}`; rejects
 * with an ApiError (401 when the server does not accept the token).
 */
export function whoAmI(token) {
  return requestJson("GET", "/api/me", { token });
}

/**
 * An incremental parser of the `text/event-stream` format: feed it decoded text as it
 * arrives, get back the complete events. Follows the HTML spec's field rules (CR, LF
 * or CRLF line ends; `data` lines joined with LF; the last `id` carries over to later
 * events; comments and `retry` ignored).
 */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.eventType = "";
    this.data = [];
    this.lastId = "";
  }

  /** @returns {{event: string, data: string, id: string}[]} */
  push(text) {
    this.buffer += text;
    const events = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      // A lone CR at the end may be the first half of CRLF: wait for more text.
      if (!match || (match[0] === "\r" && match.index === this.buffer.length - 1)) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event) events.push(event);
    }
    return events;
  }

  /** Ends the stream: an event without its closing blank line is dropped, as browsers do. */
  finish() {
    this.buffer = "";
    this.eventType = "";
    this.data = [];
  }

  line(line) {
    if (line === "") {
      if (this.data.length === 0) {
        this.eventType = "";
        return null;
      }
      const event = { event: this.eventType || "message", data: this.data.join("\n"), id: this.lastId };
      this.eventType = "";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.eventType = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
    return null;
  }
}

/** The API of one signed-in user. */
export class Api {
  /** @param {string} token @param {string} userId */
  constructor(token, userId) {
    this.token = token;
    this.userId = userId;
    this.base = `/api/${encodeURIComponent(userId)}`;
  }

  get(path) {
    return requestJson("GET", `${this.base}${path}`, { token: this.token });
  }

  /** One page of conversations, newest activity first: `{items, next_cursor?}`. */
  conversations(cursor) {
    const query = new URLSearchParams({ limit: "50" });
    if (cursor) query.set("cursor", cursor);
    return this.get(`/conversations?${query}`);
  }

  /** Every message of a conversation, oldest first (follows the pages, up to a bound). */
  async messages(conversationId) {
    return this.allPages(`/conversations/${encodeURIComponent(conversationId)}/messages`, 200, 50);
  }

  /** Every task of the user (pending and completed), in the projection's order. */
  async tasks() {
    return this.allPages("/tasks", 200, 25, { status: "all" });
  }

  async allPages(path, limit, maxPages, params = {}) {
    const items = [];
    let cursor;
    for (let page = 0; page < maxPages; page += 1) {
      const query = new URLSearchParams({ ...params, limit: String(limit) });
      if (cursor) query.set("cursor", cursor);
      const body = await this.get(`${path}?${query}`);
      items.push(...(body.items || []));
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    return items;
  }

  /**
   * Sends a chat message and follows its turn. `onEvent(name, data, id)` is called
   * with `accepted` ({conversation_id, request_id} from the response headers), then
   * for each event with its parsed JSON and its id. Resolves when the stream ends;
   * rejects with an ApiError when the request is refused, the connection drops or the
   * stream stays silent too long.
   */
  chatStream(message, conversationId, onEvent, signal) {
    const body = { message };
    if (conversationId) body.conversation_id = conversationId;
    return this.events("POST", "/chat/stream", { body, onEvent, signal });
  }

  /** Answers the conversation's last message again, followed like `chatStream`. */
  regenerateStream(conversationId, onEvent, signal) {
    const path = `/conversations/${encodeURIComponent(conversationId)}/regenerate/stream`;
    return this.events("POST", path, { body: {}, onEvent, signal });
  }

  /**
   * Follows a turn already running (or finished): its events after `lastEventId`
   * (all of them when empty), then the live ones, to its end.
   */
  followTurn(requestId, lastEventId, onEvent, signal) {
    const headers = lastEventId ? { "Last-Event-ID": lastEventId } : {};
    return this.events("GET", `/turns/${encodeURIComponent(requestId)}/events`, { headers, onEvent, signal });
  }

  /** Stops a running turn; it ends with the `cancelled` error. */
  cancel(requestId) {
    return requestJson("POST", `${this.base}/turns/${encodeURIComponent(requestId)}/cancel`, {
      token: this.token,
    });
  }

  /** Approves or declines the tool call a turn waits on: the turn's next answer. */
  decide(requestId, approvalId, approve) {
    const path = `${this.base}/turns/${encodeURIComponent(requestId)}/approvals/${encodeURIComponent(approvalId)}`;
    return requestJson("POST", path, { token: this.token, body: { approve }, timeoutMs: 120_000 });
  }

  rename(conversationId, title) {
    return requestJson("PATCH", `${this.base}/conversations/${encodeURIComponent(conversationId)}`, {
      token: this.token,
      body: { title },
    });
  }

  deleteConversation(conversationId) {
    return requestJson("DELETE", `${this.base}/conversations/${encodeURIComponent(conversationId)}`, {
      token: this.token,
    });
  }

  /** Reads an event stream of the API; see `chatStream`. */
  async events(method, path, { body, headers = {}, onEvent, signal }) {
    const controller = new AbortController();
    if (signal) signal.addEventListener("abort", () => controller.abort(), { once: true });
    let idleTimer;
    let timedOut = false;
    const armIdleTimer = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        timedOut = true;
        controller.abort();
      }, STREAM_IDLE_TIMEOUT_MS);
    };
    armIdleTimer();
    try {
      let response;
      try {
        response = await fetch(`${this.base}${path}`, {
          method,
          headers: {
            Accept: "text/event-stream",
            ...(body === undefined ? {} : { "Content-Type": "application/json" }),
            Authorization: `Bearer ${this.token}`,
            ...headers,
          },
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: controller.signal,
          cache: "no-store",
        });
      } catch (error) {
        throw transportError(error, timedOut);
      }
      if (!response.ok) throw errorFromBody(response.status, await readJson(response));
      // 204: the turn ended before the id we have, nothing more to read.
      if (response.status === 204) return;
      if (!response.body) throw new ApiError(0, "network", "This browser cannot read streamed answers.");
      const requestId = response.headers.get("x-request-id");
      if (requestId) {
        // The turn is accepted (and will finish) before its first event: say which it is.
        onEvent("accepted", { conversation_id: response.headers.get("x-conversation-id"), request_id: requestId }, "");
      }

      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SseParser();
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          throw transportError(error, timedOut);
        }
        if (chunk.done) break;
        armIdleTimer();
        for (const { event, data, id } of parser.push(chunk.value)) {
          let json = null;
          try {
            json = data ? JSON.parse(data) : null;
          } catch {
            continue; // not one of the gateway's events
          }
          onEvent(event, json, id);
        }
      }
      parser.finish();
    } finally {
      clearTimeout(idleTimer);
    }
  }
}
