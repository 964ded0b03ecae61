/**
 * session.js: the demo page's credentials and its REST calls.
 *
 * Two ways in:
 *
 * - Password login (`POST /api/v1/auth/login`).  The server sets the
 *   HttpOnly `access_token` cookie and every request carries it; the page
 *   keeps only `{userId, expiresAt}` in localStorage, so that another tab of
 *   this browser ("Open another device") is signed in as the same user.
 * - A pasted token (JWT).  It lives in this tab's sessionStorage and goes in
 *   `Authorization: Bearer`.  Using one for another user logs the browser
 *   out of its password session: on the stream the cookie is read before a
 *   ticket, so that user's cookie would win.
 *
 * Either way the stream is opened with a single-use stream ticket, so the
 * JWT itself never sits in a URL, a history entry or a server log.
 *
 * A pasted token expires and nothing in this page can renew it.  A page that
 * embeds the demo (or a test) may define
 * `window.demoTokenProvider = async (userId) => jwt`: it is asked for a new
 * token when the stream reports `token-expired` or the server refuses the
 * current one.  Without it, an expired session ends with "log in again".
 */

/** The accounts `python server.py --demo` creates (password "demo"). */
export const DEMO_USERS = Object.freeze(['empresaabc_123', 'empresaxyz_456', 'empresadef_789']);

const SESSION_KEY = 'notify-demo:session';   // localStorage: the cookie session
const TOKEN_KEY = 'notify-demo:token';       // sessionStorage: a pasted token

/** An API error: `status`, `code` and `message` from the JSON error body. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    // 401/403: the credential is gone or not enough; retrying will not help.
    this.permanent = status === 401 || status === 403;
  }
}

/**
 * Who this tab is signed in as, and how its requests authenticate.
 */
export class Session {
  /**
   * @param {{mode: 'cookie'|'token', userId: string, token?: string, expiresAt?: number}} fields
   *   `expiresAt` is in milliseconds since the epoch.
   */
  constructor({ mode, userId, token = null, expiresAt = null }) {
    this.mode = mode;
    this.userId = userId;
    this.token = token;
    this.expiresAt = expiresAt;
  }

  /** The session this tab is in (a pasted token wins), or null. */
  static current() {
    const token = readStorage(sessionStorage, TOKEN_KEY);
    if (token) {
      const claims = decodeClaims(token);
      if (claims) return new Session({ mode: 'token', userId: claims.sub, token, expiresAt: claims.exp * 1000 });
    }
    const stored = readStorage(localStorage, SESSION_KEY);
    if (stored) {
      try {
        const { userId, expiresAt } = JSON.parse(stored);
        if (typeof userId === 'string' && expiresAt > Date.now()) return new Session({ mode: 'cookie', userId, expiresAt });
      } catch { /* ignore a corrupt entry */ }
    }
    return null;
  }

  /** Sign in with a password; the server sets the cookie. */
  static async login(userId, password) {
    const body = await request('POST', '/api/v1/auth/login', { userId, password });
    sessionStorage.removeItem(TOKEN_KEY);
    const session = new Session({ mode: 'cookie', userId: body.userId, expiresAt: Date.now() + body.expiresIn * 1000 });
    localStorage.setItem(SESSION_KEY, JSON.stringify({ userId: session.userId, expiresAt: session.expiresAt }));
    return session;
  }

  /**
   * Use a pasted token for this tab.
   *
   * @throws {Error} when it is not a JWT with `sub` and `exp`, or expired.
   */
  static async fromToken(token) {
    const claims = decodeClaims(token.trim());
    if (!claims) throw new Error('That is not a token with a user (sub) and an expiry (exp).');
    if (claims.exp * 1000 <= Date.now()) throw new Error('That token has expired.');
    const cookieSession = Session.current();
    if (cookieSession?.mode !== 'cookie' || cookieSession.userId !== claims.sub) {
      // Another user's cookie (or one this page does not know of) would
      // authenticate the stream instead of the ticket: sign it out.
      localStorage.removeItem(SESSION_KEY);
      await dropCookie();
    }
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    return new Session({ mode: 'token', userId: claims.sub, token: token.trim(), expiresAt: claims.exp * 1000 });
  }

  /** The storage key other tabs watch to follow a login or logout. */
  static get storageKey() { return SESSION_KEY; }

  /** Sign out (the cookie for every tab; a pasted token for this tab). */
  async logout() {
    if (this.mode === 'token') {
      sessionStorage.removeItem(TOKEN_KEY);
      return;
    }
    localStorage.removeItem(SESSION_KEY);
    await dropCookie();
  }

  /** A URL that opens this session in another tab. */
  deviceUrl() {
    // A fragment is never sent to the server, so the token stays out of
    // its logs; the page removes it from the address bar on arrival.
    return this.mode === 'token' ? `/#token=${encodeURIComponent(this.token)}` : '/';
  }

  /** The path of this user's notifications (`suffix` appended). */
  path(suffix = '') {
    return `/api/v1/users/${encodeURIComponent(this.userId)}/notifications${suffix}`;
  }

  /**
   * One API call as this session; a refused pasted token is renewed once
   * through `window.demoTokenProvider` when there is one.
   *
   * @returns {Promise<any>} the parsed JSON body (null for 204).
   * @throws {ApiError}
   */
  async request(method, path, body) {
    try {
      return await request(method, path, body, this._headers());
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401 || !(await this.renew())) throw error;
      return request(method, path, body, this._headers());
    }
  }

  /**
   * A fresh stream ticket: the client's `getTicket`.
   *
   * @param {{reason: string}} info 'token-expired' renews a pasted token first.
   */
  async ticket({ reason } = {}) {
    if (this.mode === 'token' && (reason === 'token-expired' || this.expiresAt <= Date.now())) {
      if (!(await this.renew())) throw new ApiError(401, 'token_expired', 'The token has expired.');
    }
    const { ticket } = await this.request('POST', '/api/v1/auth/stream-ticket');
    return ticket;
  }

  /** Ask `window.demoTokenProvider` for a new token; :returns: whether it gave one. */
  async renew() {
    const provider = globalThis.demoTokenProvider;
    if (this.mode !== 'token' || typeof provider !== 'function') return false;
    const token = await provider(this.userId);
    const claims = typeof token === 'string' ? decodeClaims(token) : null;
    if (!claims || claims.sub !== this.userId) return false;
    this.token = token;
    this.expiresAt = claims.exp * 1000;
    sessionStorage.setItem(TOKEN_KEY, token);
    return true;
  }

  _headers() {
    return this.mode === 'token' ? { Authorization: `Bearer ${this.token}` } : {};
  }
}

/** The public stats (no credential). */
export function fetchStats() {
  return request('GET', '/api/v1/stats');
}

async function request(method, path, body, headers = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers }, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  let json = null;
  try { json = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const error = json?.error ?? {};
    throw new ApiError(response.status, error.code ?? 'error', error.message ?? `HTTP ${response.status}`);
  }
  return json;
}

async function dropCookie() {
  try {
    await request('POST', '/api/v1/auth/logout');
  } catch { /* already gone */ }
}

/** The claims of a JWT, unverified (only the server can verify). */
export function decodeClaims(token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent(
      Array.from(atob(base64), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''),
    );
    const claims = JSON.parse(json);
    if (typeof claims.sub !== 'string' || !claims.sub || typeof claims.exp !== 'number') return null;
    return claims;
  } catch {
    return null;
  }
}

function readStorage(storage, key) {
  try {
    return storage.getItem(key);
  } catch {
    return null;
  }
}
