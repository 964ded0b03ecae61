/**
 * notifications-client.js: a small browser client for the notification
 * stream (`GET /api/v1/users/{userId}/notifications/stream`).
 *
 * Copy this one file into an app; it has no dependencies and no build step.
 *
 *     import { NotificationsClient } from './notifications-client.js';
 *
 *     const client = new NotificationsClient({
 *       userId: 'empresaabc_123',
 *       // Called before every connection: a stream ticket is single-use.
 *       getTicket: async ({ reason }) => (await postJson('/api/v1/auth/stream-ticket')).ticket,
 *       // Called when the inbox may be stale (first connect, `reset`).
 *       fetchList: () => getJson('/api/v1/users/empresaabc_123/notifications?limit=50'),
 *       shared: true,                     // one connection per browser (below)
 *     });
 *     client.on('notification', (n) => showToast(n));
 *     client.on('read', ({ notificationIds, unreadCount }) => setBadge(unreadCount));
 *     client.on('deleted', ({ notificationIds }) => removeRows(notificationIds));
 *     client.on('list', (page) => renderInbox(page));
 *     client.on('state', ({ state }) => showIndicator(state));
 *     client.on('build.finished', (data) => ...);   // any name from POST /api/v1/events
 *     client.start();
 *     ...
 *     client.close();
 *
 * Why it does its own reconnecting
 * --------------------------------
 * A browser's EventSource reconnects by itself, but with the URL it was
 * opened with: a `?ticket=` that has been used is refused (401) and the
 * EventSource then gives up for good.  So on any error this client closes
 * the EventSource, asks `getTicket()` for a fresh ticket, and opens a new one
 * with `?lastEventId=<last cursor seen>` (a new EventSource cannot be given a
 * Last-Event-ID header).  The first retry waits `retryMs` (the server's
 * `retry:` is 2000 ms, which scripts cannot read); failed attempts back off
 * up to `maxRetryMs`, with jitter so that a restarted server is not hit by
 * every browser in the same millisecond.
 *
 * Credentials: `getTicket({ reason })` returns a ticket string, or null to
 * rely on the `access_token` cookie.  `reason` is 'connect', 'reconnect' or
 * 'token-expired'; on 'token-expired' the app should refresh its own
 * credential first (the ticket inherits the expiry of the token that bought
 * it).  An error thrown by `getTicket` with `permanent: true` (say, a 401:
 * the session is over) stops the client (state 'stopped', an 'error'
 * event); any other error (server restarting, offline) is retried.
 *
 * The last cursor is kept in localStorage per user, so a reloaded page
 * resumes where it was.  Within a page's life the tab's own cursor is used,
 * never the stored one, which another tab may have moved past events this
 * tab has not seen.
 *
 * One connection per browser (`shared: true`)
 * -------------------------------------------
 * Browsers open at most 6 HTTP/1.1 connections per origin; each tab's stream
 * holds one for good, so a 7th tab never connects (and its other requests
 * queue behind the streams).  In shared mode the tabs of one user elect a
 * leader with the Web Locks API: every tab asks for the exclusive lock
 * `notifications-leader:<userId>`; the holder opens the one EventSource and
 * relays every event to the other tabs over the BroadcastChannel
 * `notifications:<userId>`.  The lock is released by the browser when the
 * leader's tab closes or crashes, and the next waiting tab takes over: it
 * connects with the cursor of the last event relayed to it, so the server
 * replays whatever was published during the handover.  Each tab drops events
 * whose cursor it has already seen, so nothing is shown twice either.
 * Followers tell the leader which event names they listen to, since an
 * EventSource only delivers named events it has a listener for.
 * Web Locks exist only in secure contexts (https, localhost, 127.0.0.1); where
 * they are missing the client quietly falls back to one connection per tab.
 *
 * Events for `on(name, fn)`: 'notification' (a new notification), 'read'
 * (`notification-read`), 'deleted' (`notification-deleted`), 'reset' (the
 * history did not reach the cursor; 'list' follows), 'token-expired',
 * 'ready' ({connectionId, userId, instanceId}, on the tab holding the
 * connection), 'list' (the result of `fetchList`), 'state' ({state, role,
 * connectionId}), 'error', and any other name, which subscribes to that
 * named stream event.  Handlers get `(data, meta)` where `meta` is
 * `{ name, id }` (the SSE event name and cursor).
 */

/** States shown by a connection indicator. */
export const STATES = Object.freeze({
  CONNECTING: 'connecting',
  LIVE: 'live',
  RECONNECTING: 'reconnecting',
  STOPPED: 'stopped',
});

/** Stream event names and the client names they are delivered under. */
const STREAM_TO_CLIENT = Object.freeze({
  message: 'notification',
  'notification-read': 'read',
  'notification-deleted': 'deleted',
  reset: 'reset',
});

/** Client events that are not stream event names to subscribe to. */
const LOCAL_EVENTS = new Set([
  'notification', 'read', 'deleted', 'reset', 'token-expired', 'ready', 'list', 'state', 'error', 'message',
]);

const CURSOR = /^\d{1,15}$/;

/**
 * The stream of one user, in one tab, optionally shared by the user's tabs.
 */
export class NotificationsClient {
  /**
   * @param {object} options
   * @param {string} options.userId whose stream to open.
   * @param {(info: {reason: string}) => Promise<string|null>} [options.getTicket]
   *   a fresh single-use stream ticket, or null to rely on the cookie.
   * @param {() => Promise<object>} [options.fetchList] the current list
   *   (`GET .../notifications`), emitted as 'list' when the inbox may be stale.
   * @param {boolean} [options.shared] one connection per browser (see above).
   * @param {number} [options.retryMs] first reconnect delay (the server's `retry:`).
   * @param {number} [options.maxRetryMs] longest delay between failed attempts.
   * @param {string} [options.baseUrl] origin of the server; '' for this page's.
   * @param {string[]} [options.events] named stream events to subscribe to
   *   from the start (same as calling `on(name)` for each).
   * @param {Storage|null} [options.storage] where the last cursor survives
   *   reloads (localStorage by default; null to keep it in memory only).
   * @param {string|null} [options.lastEventId] resume from this cursor instead
   *   of the stored one (a tab replacing its client keeps its own position).
   */
  constructor({
    userId,
    getTicket = async () => null,
    fetchList = null,
    shared = false,
    retryMs = 2000,
    maxRetryMs = 30000,
    baseUrl = '',
    events = [],
    storage = defaultStorage(),
    lastEventId = undefined,
  }) {
    if (!userId) throw new TypeError('userId is required');
    this.userId = userId;
    this._getTicket = getTicket;
    this._fetchList = fetchList;
    this._retryMs = retryMs;
    this._maxRetryMs = maxRetryMs;
    this._streamUrl = `${baseUrl}/api/v1/users/${encodeURIComponent(userId)}/notifications/stream`;
    this._storage = storage;
    this._storageKey = `notifications:lastEventId:${userId}`;
    this._wantShared = Boolean(shared);

    this._listeners = new Map();
    // Named stream events this tab (and, when leading, its followers) want.
    this._names = new Set(['notification-read', 'notification-deleted', 'reset', ...events]);
    this._lastId = CURSOR.test(lastEventId ?? '') ? Number(lastEventId) : this._loadCursor();
    this._state = STATES.STOPPED;
    this._role = 'direct';
    this._connectionId = null;
    this._instanceId = null;

    this._es = null;
    this._attempt = 0;        // bumps on every connect; stale callbacks compare it
    this._failures = 0;       // consecutive attempts that never got `ready`
    this._everLive = false;
    this._openedWithCursor = false;
    this._needList = true;    // the first live moment always loads the list
    this._listSeq = 0;
    this._timer = null;
    this._started = false;
    this._closed = false;

    this._channel = null;
    this._lockAbort = null;
    this._releaseLock = null;
    this._onPageHide = () => this._announceLeaving();
  }

  /** Whether this browser can share one connection between tabs. */
  static get canShare() {
    return typeof BroadcastChannel === 'function' && Boolean(globalThis.navigator?.locks);
  }

  /** 'connecting', 'live', 'reconnecting' or 'stopped'. */
  get state() { return this._state; }

  /** 'direct' (own connection), 'leader' (holds the shared one) or 'follower'. */
  get role() { return this._role; }

  /** The `connectionId` from `ready` of the connection this tab is fed by. */
  get connectionId() { return this._connectionId; }

  /** The cursor of the last event seen (a string), or null. */
  get lastEventId() { return this._lastId === null ? null : String(this._lastId); }

  /**
   * Listen to a client event or a named stream event.
   *
   * @returns {() => void} a function that removes the listener.
   */
  on(name, fn) {
    const clientName = STREAM_TO_CLIENT[name] ?? name;
    if (!this._listeners.has(clientName)) this._listeners.set(clientName, new Set());
    this._listeners.get(clientName).add(fn);
    if (!LOCAL_EVENTS.has(clientName)) this._listenTo([clientName]);
    return () => this._listeners.get(clientName)?.delete(fn);
  }

  /** Open the stream (or join the shared one).  Returns the client. */
  start() {
    if (this._started || this._closed) return this;
    this._started = true;
    if (this._wantShared && NotificationsClient.canShare) {
      this._startShared();
    } else {
      this._role = 'direct';
      this._connect('connect');
    }
    return this;
  }

  /** Stop for good: close the stream, leave the shared group, stop timers. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._attempt += 1;
    clearTimeout(this._timer);
    this._closeSource();
    if (this._role === 'leader') this._announceLeaving();
    this._lockAbort?.abort();
    this._releaseLock?.();
    this._channel?.close();
    this._channel = null;
    globalThis.removeEventListener?.('pagehide', this._onPageHide);
    this._setState(STATES.STOPPED);
    this._listeners.clear();
  }

  // -- one connection -------------------------------------------------------

  /** Open an EventSource with a fresh ticket and the last cursor. */
  async _connect(reason) {
    const attempt = ++this._attempt;
    clearTimeout(this._timer);
    this._closeSource();
    this._setState(this._everLive ? STATES.RECONNECTING : STATES.CONNECTING);
    let ticket;
    try {
      ticket = await this._getTicket({ reason });
    } catch (error) {
      if (attempt !== this._attempt) return;
      if (error?.permanent) {
        this._stop();
        this._emit('error', error);
      } else {
        this._failures += 1;
        this._scheduleReconnect('reconnect');
      }
      return;
    }
    if (attempt !== this._attempt) return;

    const query = new URLSearchParams();
    if (ticket) query.set('ticket', ticket);
    this._openedWithCursor = this._lastId !== null;
    if (this._openedWithCursor) query.set('lastEventId', String(this._lastId));
    const search = query.toString();
    const source = new EventSource(search ? `${this._streamUrl}?${search}` : this._streamUrl, { withCredentials: true });
    // What this client knows about the one EventSource it has open.
    const stream = { source, ready: false, names: new Set() };
    this._es = stream;

    source.addEventListener('ready', (event) => this._onReady(stream, event));
    source.onmessage = (event) => this._fromStream(stream, 'message', event);
    for (const name of this._names) this._subscribe(stream, name);
    source.addEventListener('token-expired', () => {
      if (stream !== this._es) return;
      // The server ends the stream next; reconnecting with the same URL
      // would present a used ticket, so start over with a fresh one now.
      this._closeSource();
      this._emit('token-expired', {}, { name: 'token-expired', id: '' });
      this._connect('token-expired');
    });
    source.onerror = () => {
      if (stream !== this._es) return;
      // Either the stream ended (server restart, drop) or it never opened
      // (401/403/429, network).  Both: reconnect ourselves, see the header.
      if (!stream.ready) this._failures += 1;
      this._closeSource();
      this._scheduleReconnect('reconnect');
    };
  }

  _subscribe(stream, name) {
    if (stream.names.has(name)) return;
    stream.names.add(name);
    stream.source.addEventListener(name, (event) => this._fromStream(stream, name, event));
  }

  _onReady(stream, event) {
    if (stream !== this._es) return;
    stream.ready = true;
    let info = {};
    try { info = JSON.parse(event.data); } catch { /* keep {} */ }
    this._connectionId = info.connectionId ?? null;
    this._instanceId = info.instanceId ?? null;
    this._failures = 0;
    this._everLive = true;
    this._setState(STATES.LIVE);
    this._emit('ready', info, { name: 'ready', id: '' });
    // Without a cursor the server replays nothing: whatever was published
    // before this moment is only in the list, so every tab refetches it.
    if (!this._openedWithCursor) {
      this._needList = true;
      this._post({ kind: 'resync' });
    }
    if (this._needList) this._refreshList();
  }

  _fromStream(stream, name, event) {
    if (stream !== this._es) return;
    this._deliver(name, event.data, event.lastEventId);
  }

  _closeSource() {
    if (this._es) {
      this._es.source.close();
      this._es = null;
    }
  }

  _scheduleReconnect(reason) {
    if (this._closed) return;
    this._setState(STATES.RECONNECTING);
    const base = Math.min(this._maxRetryMs, this._retryMs * 2 ** Math.min(this._failures, 5));
    // Jitter: after a server restart, not every browser at the same moment.
    const delay = base * (0.75 + Math.random() * 0.5);
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(reason), delay);
  }

  /** Give up after a permanent failure (the session is over). */
  _stop() {
    this._attempt += 1;
    clearTimeout(this._timer);
    this._closeSource();
    this._setState(STATES.STOPPED);
    if (this._role === 'leader') {
      // Let another tab try with its own credential rather than keep the
      // whole group waiting on this one.
      this._releaseLock?.();
      this._releaseLock = null;
      this._channel?.close();
      this._channel = null;
      this._role = 'direct';
    }
  }

  // -- events -----------------------------------------------------------------

  /**
   * Hand one stream event to the listeners (and, when leading, to the
   * other tabs), unless its cursor was already seen.
   */
  _deliver(name, data, id) {
    const cursor = CURSOR.test(id ?? '') ? Number(id) : null;
    // `reset` carries the server's head cursor, which may be lower than
    // ours (a cursor from another database): it always wins.
    if (name !== 'reset' && cursor !== null && this._lastId !== null && cursor <= this._lastId) return;
    if (cursor !== null) {
      this._lastId = cursor;
      this._saveCursor(cursor, name === 'reset');
    }
    if (this._role === 'leader') this._post({ kind: 'event', name, data, id });
    let payload = {};
    try { payload = data ? JSON.parse(data) : {}; } catch { payload = data; }
    this._emit(STREAM_TO_CLIENT[name] ?? name, payload, { name, id: id ?? '' });
    if (name === 'reset') this._refreshList();
  }

  async _refreshList() {
    this._needList = false;
    if (!this._fetchList) return;
    const seq = ++this._listSeq;
    try {
      const page = await this._fetchList();
      // Only the newest request's answer counts: an older one may predate
      // changes that a newer one already includes.
      if (seq === this._listSeq && !this._closed) this._emit('list', page);
    } catch (error) {
      if (!this._closed) this._emit('error', error);
    }
  }

  _listenTo(names) {
    const fresh = names.filter((name) => !this._names.has(name));
    for (const name of fresh) {
      this._names.add(name);
      if (this._es) this._subscribe(this._es, name);
    }
    if (fresh.length && this._role === 'follower') this._post({ kind: 'listen', names: fresh });
  }

  _emit(name, data, meta = {}) {
    for (const fn of [...(this._listeners.get(name) ?? [])]) {
      try {
        fn(data, meta);
      } catch (error) {
        // One broken listener must not starve the others (or the relay).
        setTimeout(() => { throw error; });
      }
    }
  }

  _setState(state) {
    // A tab's own connection id is only meaningful while it is live.
    if (state !== STATES.LIVE && this._role !== 'follower') this._connectionId = null;
    const changed = state !== this._state;
    this._state = state;
    if (this._role === 'leader') this._post(this._stateMessage());
    if (changed || this._role !== 'direct') {
      this._emit('state', { state, role: this._role, connectionId: this._connectionId });
    }
  }

  _stateMessage() {
    return { kind: 'state', state: this._state, connectionId: this._connectionId, instanceId: this._instanceId };
  }

  // -- the cursor across reloads ------------------------------------------------

  _loadCursor() {
    try {
      const stored = this._storage?.getItem(this._storageKey);
      return stored && CURSOR.test(stored) ? Number(stored) : null;
    } catch {
      return null;   // storage disabled (privacy mode): memory only
    }
  }

  _saveCursor(cursor, force) {
    try {
      const stored = this._loadCursor();
      // Several tabs write here; keep the highest unless the server reset us.
      if (force || stored === null || cursor > stored) this._storage?.setItem(this._storageKey, String(cursor));
    } catch { /* memory only */ }
  }

  // -- one connection per browser -------------------------------------------------

  _startShared() {
    this._role = 'follower';
    this._channel = new BroadcastChannel(`notifications:${this.userId}`);
    this._channel.onmessage = (event) => this._onChannel(event.data);
    globalThis.addEventListener?.('pagehide', this._onPageHide);
    this._setState(STATES.CONNECTING);
    const lockName = `notifications-leader:${this.userId}`;
    // Ask without waiting first, so a tab knows at once whether it follows.
    navigator.locks.request(lockName, { ifAvailable: true }, (lock) => {
      if (lock && !this._closed) return this._lead();
      if (this._closed) return undefined;
      this._follow();
      this._lockAbort = new AbortController();
      navigator.locks
        .request(lockName, { signal: this._lockAbort.signal }, () => (this._closed ? undefined : this._lead()))
        .catch((error) => { if (error?.name !== 'AbortError') this._emit('error', error); });
      return undefined;
    }).catch((error) => this._emit('error', error));
  }

  /** Become the tab holding the connection; resolves when leadership ends. */
  _lead() {
    this._role = 'leader';
    this._post({ kind: 'leader' });
    this._connect(this._everLive ? 'reconnect' : 'connect');
    return new Promise((resolve) => { this._releaseLock = resolve; });
  }

  _follow() {
    this._role = 'follower';
    this._post({ kind: 'hello', names: [...this._names] });
    // Subscribed to the channel already, so everything after this fetch is
    // relayed to us; duplicates between the two are the app's to merge by id.
    this._refreshList();
  }

  _post(message) {
    if (this._channel && this._role !== 'direct') {
      try { this._channel.postMessage(message); } catch { /* channel closing */ }
    }
  }

  _announceLeaving() {
    if (this._role === 'leader') this._post({ kind: 'state', state: STATES.RECONNECTING, connectionId: null });
  }

  _onChannel(message) {
    if (this._closed || !message || typeof message !== 'object') return;
    if (this._role === 'leader') {
      if (message.kind === 'hello' || message.kind === 'listen') {
        this._listenTo(message.names ?? []);
        if (message.kind === 'hello') this._post(this._stateMessage());
      }
      return;
    }
    switch (message.kind) {
      case 'leader':
        // A new leader: tell it what we listen to.
        this._post({ kind: 'listen', names: [...this._names] });
        break;
      case 'state':
        this._connectionId = message.connectionId ?? null;
        this._instanceId = message.instanceId ?? null;
        if (message.state === STATES.LIVE) this._everLive = true;
        this._setState(message.state === STATES.STOPPED ? STATES.RECONNECTING : message.state);
        break;
      case 'event':
        this._deliver(message.name, message.data, message.id);
        break;
      case 'resync':
        this._refreshList();
        break;
      default:
        break;
    }
  }
}

function defaultStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;   // access denied (sandboxed frame, privacy settings)
  }
}
