/**
 * app.js: the demo page.  Signs in, runs a NotificationsClient, and shows
 * toasts, the inbox with its unread badge, a send form, the connection
 * state and the server's stats.
 *
 * The inbox is a map by notificationId: the list fetched from the API and
 * the stream's events may overlap (a fetch races the stream by design, see
 * notifications-client.js), and merging by id makes the overlap harmless.
 * The unread count comes from the server whenever it says one
 * (`notification-read`, `notification-deleted`, the list); in between it is
 * counted locally.
 *
 * `window.notifyDemo` exposes the state (client, inbox, a log of every event
 * the client delivered) for the console and for the browser tests.
 */

import { NotificationsClient, STATES } from './notifications-client.js';
import { ApiError, DEMO_USERS, Session, fetchStats } from './session.js';

const SHARED_KEY = 'notify-demo:shared';
const TOAST_LIMIT = 4;
const TOAST_MS = 8000;
// Notifications older than this arrive silently (into the inbox, no toast):
// a laptop waking up after a night should not fire fifty toasts.
const TOAST_MAX_AGE_MS = 2 * 60 * 1000;
const LOG_LIMIT = 30;
const STATS_EVERY_MS = 2000;
const TYPES = new Set(['info', 'success', 'warning', 'error']);

const $ = (selector) => document.querySelector(selector);

const ui = {
  conn: $('#conn'),
  connText: $('#conn-text'),
  connId: $('#conn-id'),
  who: $('#who'),
  whoUser: $('#who-user'),
  logout: $('#logout'),
  toasts: $('#toasts'),
  loginView: $('#login-view'),
  loginForm: $('#login-form'),
  loginUser: $('#login-user'),
  loginPassword: $('#login-password'),
  tokenForm: $('#token-form'),
  tokenInput: $('#token-input'),
  loginError: $('#login-error'),
  appView: $('#app-view'),
  badge: $('#badge'),
  readAll: $('#read-all'),
  inbox: $('#inbox'),
  inboxEmpty: $('#inbox-empty'),
  inboxStatus: $('#inbox-status'),
  sendForm: $('#send-form'),
  sendStatus: $('#send-status'),
  openDevice: $('#open-device'),
  sharedToggle: $('#shared-toggle'),
  roleText: $('#role-text'),
  stats: $('#stats'),
  statsUpdated: $('#stats-updated'),
  eventLog: $('#event-log'),
};

/** Everything the page knows; also `window.notifyDemo`. */
const demo = {
  session: null,
  client: null,
  inbox: new Map(),
  unread: 0,
  /** Every event the client delivered: {event, name, id, notificationId?}. */
  log: [],
  statsTimer: null,
};
window.notifyDemo = demo;

/** Notification ids with a request in flight. */
const pending = new Set();

// -- signing in and out -------------------------------------------------------

function boot() {
  for (const userId of DEMO_USERS) ui.loginUser.append(new Option(userId, userId));
  ui.loginForm.addEventListener('submit', onLogin);
  ui.tokenForm.addEventListener('submit', onToken);
  ui.logout.addEventListener('click', onLogout);
  ui.readAll.addEventListener('click', onReadAll);
  ui.inbox.addEventListener('click', onInboxClick);
  ui.sendForm.addEventListener('submit', onSend);
  ui.openDevice.addEventListener('click', onOpenDevice);
  ui.sharedToggle.addEventListener('change', onSharedToggle);
  window.addEventListener('storage', onStorage);

  ui.sharedToggle.checked = sharedWanted();
  if (!NotificationsClient.canShare) {
    ui.sharedToggle.disabled = true;
    ui.roleText.textContent = 'This browser (or a page not on https/localhost) has no Web Locks: one connection per tab.';
  }

  const token = tokenFromUrl();
  if (token) {
    Session.fromToken(token).then(enter, (error) => showLogin(error.message));
    return;
  }
  const session = Session.current();
  if (session) enter(session);
  else showLogin();
}

/** A token handed over in the URL (`#token=` or `?token=`), removed at once. */
function tokenFromUrl() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const token = hash.get('token') || query.get('token');
  if (token) {
    // Out of the address bar, the history and any bookmark.
    history.replaceState(null, '', location.pathname);
  }
  return token;
}

async function onLogin(event) {
  event.preventDefault();
  ui.loginError.textContent = '';
  try {
    enter(await Session.login(ui.loginUser.value, ui.loginPassword.value));
  } catch (error) {
    showLogin(error instanceof ApiError && error.status === 401 ? 'Wrong user or password.' : error.message);
  }
}

async function onToken(event) {
  event.preventDefault();
  ui.loginError.textContent = '';
  try {
    enter(await Session.fromToken(ui.tokenInput.value));
    ui.tokenInput.value = '';
  } catch (error) {
    showLogin(error.message);
  }
}

async function onLogout() {
  const session = demo.session;
  leave();
  await session?.logout();
  showLogin();
}

function enter(session) {
  demo.session = session;
  demo.inbox.clear();
  demo.unread = 0;
  ui.whoUser.textContent = session.userId;
  ui.who.hidden = false;
  ui.loginView.hidden = true;
  ui.appView.hidden = false;
  renderInbox();
  startClient();
  startStats();
}

/** Stop everything this session runs (the caller shows the login). */
function leave() {
  demo.client?.close();
  demo.client = null;
  demo.session = null;
  clearInterval(demo.statsTimer);
  demo.statsTimer = null;
  demo.inbox.clear();
  ui.toasts.replaceChildren();
  ui.eventLog.replaceChildren();
}

function showLogin(message = '') {
  ui.who.hidden = true;
  ui.appView.hidden = true;
  ui.loginView.hidden = false;
  ui.loginError.textContent = message;
  renderConnection({ state: STATES.STOPPED, role: 'direct', connectionId: null });
}

/** Follow a login, logout or mode switch made in another tab. */
function onStorage(event) {
  if (event.key === SHARED_KEY) {
    ui.sharedToggle.checked = sharedWanted();
    if (demo.session) startClient();
    return;
  }
  if (event.key !== Session.storageKey && event.key !== null) return;
  if (demo.session?.mode === 'token') return;   // a pasted token is this tab's own
  const session = Session.current();
  if (!session) {
    if (demo.session) {
      leave();
      showLogin('Signed out in another tab.');
    }
  } else if (session.userId !== demo.session?.userId) {
    leave();
    enter(session);
  }
}

// -- the stream ------------------------------------------------------------------

function startClient() {
  const session = demo.session;
  const previous = demo.client;
  previous?.close();
  const client = new NotificationsClient({
    userId: session.userId,
    getTicket: (info) => session.ticket(info),
    fetchList: () => session.request('GET', session.path('?limit=50')),
    shared: sharedWanted(),
    // A mode switch keeps this tab's own position in the stream.
    lastEventId: previous?.lastEventId,
  });
  demo.client = client;
  client.on('state', renderConnection);
  client.on('notification', (notification, meta) => {
    record('notification', meta, notification.notificationId);
    addNotification(notification);
  });
  client.on('read', (data, meta) => {
    record('read', meta);
    applyRead(data);
  });
  client.on('deleted', (data, meta) => {
    record('deleted', meta);
    applyDeleted(data);
  });
  client.on('reset', (data, meta) => record('reset', meta));
  client.on('token-expired', (data, meta) => record('token-expired', meta));
  client.on('ready', (data) => record('ready', { name: 'ready', id: '' }, data.connectionId));
  client.on('list', applyList);
  client.on('error', (error) => {
    if (error?.permanent && client === demo.client) {
      leave();
      showLogin('Your session has ended (the token expired or was refused). Please sign in again.');
      session.logout();   // forget it here and, for a cookie, in the other tabs
    }
  });
  client.start();
}

function sharedWanted() {
  try {
    return localStorage.getItem(SHARED_KEY) === '1';
  } catch {
    return false;
  }
}

function onSharedToggle() {
  try {
    localStorage.setItem(SHARED_KEY, ui.sharedToggle.checked ? '1' : '0');
  } catch { /* storage disabled: this tab only */ }
  if (demo.session) startClient();
}

function onOpenDevice() {
  if (demo.session) window.open(demo.session.deviceUrl(), '_blank', 'noopener');
}

const STATE_TEXT = {
  [STATES.CONNECTING]: 'Connecting…',
  [STATES.LIVE]: 'Live',
  [STATES.RECONNECTING]: 'Reconnecting…',
  [STATES.STOPPED]: 'Not connected',
};

const ROLE_TEXT = {
  direct: 'This tab has its own connection.',
  leader: 'This tab holds the one shared connection and relays it to the other tabs.',
  follower: 'This tab gets its events from the tab holding the shared connection.',
};

function renderConnection({ state, role, connectionId }) {
  ui.conn.dataset.state = state;
  ui.conn.dataset.role = role;
  ui.connText.textContent = STATE_TEXT[state] ?? state;
  ui.connId.textContent = connectionId ?? '';
  if (NotificationsClient.canShare) ui.roleText.textContent = demo.session ? ROLE_TEXT[role] ?? '' : '';
}

// -- the inbox --------------------------------------------------------------------

function addNotification(notification) {
  // The stream delivers each notification once, so it always toasts; but a
  // list fetched a moment ago may hold it already (and count it as unread).
  if (!demo.inbox.has(notification.notificationId)) {
    demo.inbox.set(notification.notificationId, notification);
    if (!notification.readAt) demo.unread += 1;
    renderInbox();
  }
  if (Date.now() - Date.parse(notification.createdAt) < TOAST_MAX_AGE_MS) showToast(notification);
}

function applyRead({ notificationIds = [], unreadCount, read }) {
  const readAt = read === false ? null : new Date().toISOString();
  for (const id of notificationIds) {
    const item = demo.inbox.get(id);
    if (item) item.readAt = readAt === null ? null : item.readAt ?? readAt;
  }
  if (Number.isInteger(unreadCount)) demo.unread = unreadCount;
  renderInbox();
}

function applyDeleted({ notificationIds = [], unreadCount }) {
  for (const id of notificationIds) demo.inbox.delete(id);
  if (Number.isInteger(unreadCount)) demo.unread = unreadCount;
  renderInbox();
}

/** Replace the inbox with a fetched page, keeping what arrived since. */
function applyList(page) {
  const items = page?.items ?? [];
  const newest = items[0]?.createdAt ?? '';
  const next = new Map(items.map((item) => [item.notificationId, item]));
  let unread = page?.unreadCount ?? 0;
  for (const item of demo.inbox.values()) {
    // Newer than the page's newest: pushed after the page was read.
    if (!next.has(item.notificationId) && item.createdAt >= newest) {
      next.set(item.notificationId, item);
      if (!item.readAt) unread += 1;
    }
  }
  demo.inbox = next;
  demo.unread = unread;
  renderInbox();
}

function sortedInbox() {
  return [...demo.inbox.values()].sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
}

function renderInbox() {
  // Re-rendering replaces the buttons: keep keyboard focus where it was.
  const focused = document.activeElement?.closest?.('[data-id] [data-action]');
  const focus = focused && { id: focused.closest('[data-id]').dataset.id, action: focused.dataset.action };

  ui.inbox.replaceChildren(...sortedInbox().map(renderItem));
  ui.inboxEmpty.hidden = demo.inbox.size > 0;
  const unread = Math.max(0, demo.unread);
  ui.badge.textContent = String(unread);
  ui.badge.dataset.count = String(unread);

  if (focus) {
    const row = ui.inbox.querySelector(`[data-id="${CSS.escape(focus.id)}"]`);
    (row?.querySelector(`[data-action="${focus.action}"]`) ?? row?.querySelector('[data-action]') ?? ui.readAll).focus();
  }
}

function renderItem(notification) {
  const type = TYPES.has(notification.type) ? notification.type : 'info';
  const unread = !notification.readAt;
  const li = el('li', { className: `item type-${type}${unread ? ' unread' : ''}` });
  li.dataset.id = notification.notificationId;

  const tag = el('span', { className: 'tag', textContent: type });
  const body = el('div', { className: 'item-body' });
  body.append(el('p', { className: 'item-message', textContent: notification.message }));
  const meta = el('p', { className: 'item-meta' });
  const time = el('time', { textContent: formatTime(notification.createdAt) });
  time.dateTime = notification.createdAt;
  meta.append(time);
  if (notification.sourceType) meta.append(' · ', notification.sourceType);
  const link = actionLink(notification, 'Open');
  if (link) meta.append(' · ', link);
  if (unread) meta.append(el('span', { className: 'visually-hidden', textContent: ' (unread)' }));
  body.append(meta);

  const actions = el('div', { className: 'item-actions' });
  const toggle = el('button', { type: 'button', className: 'button small', textContent: unread ? 'Mark read' : 'Mark unread' });
  toggle.dataset.action = 'toggle-read';
  toggle.setAttribute('aria-label', `${toggle.textContent}: ${notification.message}`);
  const remove = el('button', { type: 'button', className: 'button small ghost', textContent: 'Delete' });
  remove.dataset.action = 'delete';
  remove.setAttribute('aria-label', `Delete: ${notification.message}`);
  actions.append(toggle, remove);

  li.append(tag, body, actions);
  return li;
}

async function onInboxClick(event) {
  const button = event.target.closest('button[data-action]');
  const row = button?.closest('[data-id]');
  if (!button || !row || !demo.session) return;
  const id = row.dataset.id;
  const item = demo.inbox.get(id);
  // Not `disabled` while the request runs: a disabled button drops the
  // keyboard focus to <body>.  A set of pending ids stops double clicks.
  if (!item || pending.has(id)) return;
  pending.add(id);
  try {
    if (button.dataset.action === 'delete') {
      await demo.session.request('DELETE', demo.session.path(`/${encodeURIComponent(id)}`));
      // The stream's notification-deleted may have come first: then the
      // item is gone already and the count is the server's.
      const current = demo.inbox.get(id);
      if (current) {
        demo.inbox.delete(id);
        if (!current.readAt) demo.unread -= 1;
      }
    } else {
      const read = !item.readAt;
      const updated = await demo.session.request('PATCH', demo.session.path(`/${encodeURIComponent(id)}`), { read });
      const current = demo.inbox.get(id);
      if (current && Boolean(current.readAt) !== Boolean(updated.readAt)) demo.unread += updated.readAt ? -1 : 1;
      if (current) demo.inbox.set(id, updated);
    }
    renderInbox();
  } catch (error) {
    flash(`Could not update: ${error.message}`, ui.inboxStatus);
  } finally {
    pending.delete(id);
  }
}

async function onReadAll() {
  if (!demo.session) return;
  try {
    const result = await demo.session.request('POST', demo.session.path('/read-all'));
    const now = new Date().toISOString();
    for (const item of demo.inbox.values()) item.readAt ??= now;
    demo.unread = result.unreadCount;
    renderInbox();
  } catch (error) {
    flash(`Could not mark all read: ${error.message}`, ui.inboxStatus);
  }
}

// -- sending ----------------------------------------------------------------------

async function onSend(event) {
  event.preventDefault();
  if (!demo.session) return;
  const form = new FormData(ui.sendForm);
  const body = { type: form.get('type'), message: String(form.get('message')).trim() };
  const actionUrl = String(form.get('actionUrl') ?? '').trim();
  if (actionUrl) body.actionUrl = actionUrl;
  if (!body.message) {
    flash('Write a message first.');
    return;
  }
  try {
    // No X-Connection-Id: this tab gets its own notification through the
    // stream like every other device, which is the point of the demo.
    await demo.session.request('POST', demo.session.path(), body);
    flash('Sent.');
  } catch (error) {
    flash(`Not sent: ${error.message}`);
  }
}

function flash(message, where = ui.sendStatus) {
  where.textContent = message;
}

// -- toasts -----------------------------------------------------------------------

function showToast(notification) {
  const type = TYPES.has(notification.type) ? notification.type : 'info';
  const toast = el('div', { className: `toast type-${type}` });
  toast.dataset.id = notification.notificationId;
  const text = el('div', { className: 'toast-text' });
  text.append(el('strong', { className: 'toast-type', textContent: type }));
  text.append(el('p', { className: 'toast-message', textContent: notification.message }));
  const link = actionLink(notification, 'Open');
  if (link) text.append(link);
  const close = el('button', { type: 'button', className: 'toast-close', textContent: '×' });
  close.setAttribute('aria-label', 'Dismiss');
  toast.append(text, close);

  let timer = null;
  const dismiss = () => {
    clearTimeout(timer);
    toast.remove();
  };
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(dismiss, TOAST_MS);
  };
  close.addEventListener('click', dismiss);
  // Held open while the pointer or keyboard focus is on it (WCAG 2.2.1).
  toast.addEventListener('mouseenter', () => clearTimeout(timer));
  toast.addEventListener('mouseleave', arm);
  toast.addEventListener('focusin', () => clearTimeout(timer));
  toast.addEventListener('focusout', arm);
  arm();

  ui.toasts.prepend(toast);
  while (ui.toasts.children.length > TOAST_LIMIT) ui.toasts.lastElementChild.remove();
}

/** A link to the action URL, or null when it is not a safe one. */
function actionLink(notification, label) {
  const href = safeHref(notification.actionUrl);
  if (!href) return null;
  const link = el('a', { className: 'action-link', href, textContent: label });
  if (!href.startsWith('/')) {
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
  }
  return link;
}

/** Only a same-site path or an http(s) URL; the server checks too. */
function safeHref(url) {
  if (typeof url !== 'string' || !url) return null;
  if (/^\/(?![/\\])/.test(url)) return url;
  try {
    const parsed = new URL(url);
    return parsed.protocol === 'https:' || parsed.protocol === 'http:' ? parsed.href : null;
  } catch {
    return null;
  }
}

// -- the event log and stats -------------------------------------------------------

/**
 * Note one delivered event in `demo.log` and the on-page list.
 *
 * @param {string} detail the notification id, or the connection id of `ready`.
 */
function record(event, meta = {}, detail = '') {
  const entry = { event, name: meta.name ?? event, id: meta.id ?? '', at: Date.now() };
  if (event === 'notification') entry.notificationId = detail;
  if (event === 'ready') entry.connectionId = detail;
  demo.log.push(entry);
  const line = el('li');
  line.append(el('code', { textContent: entry.id ? `#${entry.id}` : '—' }), ` ${entry.name}`);
  if (detail) line.append(el('span', { className: 'hint', textContent: ` ${detail}` }));
  ui.eventLog.prepend(line);
  while (ui.eventLog.children.length > LOG_LIMIT) ui.eventLog.lastElementChild.remove();
}

function startStats() {
  clearInterval(demo.statsTimer);
  refreshStats();
  demo.statsTimer = setInterval(refreshStats, STATS_EVERY_MS);
}

async function refreshStats() {
  // A hidden tab does not poll: each request takes one of the browser's
  // six connections to this origin, which the streams need.
  if (document.visibilityState === 'hidden') return;
  try {
    const stats = await fetchStats();
    for (const dd of ui.stats.querySelectorAll('[data-stat]')) {
      const value = stats[dd.dataset.stat];
      dd.textContent = dd.dataset.stat === 'uptimeSeconds' ? formatDuration(value) : String(value ?? '–');
    }
    ui.statsUpdated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch {
    ui.statsUpdated.textContent = 'unavailable';
  }
}

// -- helpers ------------------------------------------------------------------------

function el(tag, props = {}) {
  return Object.assign(document.createElement(tag), props);
}

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleTimeString();
}

function formatDuration(seconds) {
  if (typeof seconds !== 'number') return '–';
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

boot();
