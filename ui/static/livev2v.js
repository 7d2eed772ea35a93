// LiveV2V browser client: one plain ES module, no dependencies, no bundler.
//
// Speaks the Daydream Scope HTTP + WebRTC API (see docs/ui.md and the API contract):
//   ICE servers first → `parameters` data channel before the offer → POST offer with
//   initialParameters → apply the answer → flush queued ICE candidates (one PATCH each) →
//   live parameter updates on the channel; `stream_stopped` ends the stream (with an automatic
//   reconnect and back-off when the server ended it).
//
//   import { LiveV2VClient, openCamera } from "./livev2v.js";
//   const client = new LiveV2VClient();                 // relative URLs; or {baseUrl: "http://host:8000"}
//                                                       // a server started with --api-key: {apiKey: "..."}
//   client.addEventListener("track", (e) => { video.srcObject = e.detail.stream; });
//   await client.connect({ input: await openCamera({ width: 512, height: 512 }),
//                          initialParameters: { prompts: [{ text: "a watercolor", weight: 1 }] } });
//   client.send({ prompts: [{ text: "an oil painting", weight: 1 }] });
//   await client.stop();

export const VERSION = "0.1.0";

/** An error a person can act on: `code` says what went wrong, `hint` what to do about it. */
export class LiveV2VError extends Error {
  constructor(message, { code = "error", status = null, detail = null, hint = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "LiveV2VError";
    this.code = code;
    this.status = status;
    this.detail = detail;
    this.hint = hint;
  }
}

const DEFAULTS = {
  baseUrl: null, // null: relative to the page (works under any root path, Spaces, notebooks)
  connectTimeoutMs: 10000, // ICE + DTLS must complete within this
  offerRetryMs: 60000, // keep retrying a 503 (pipeline loading / server busy) this long
  autoReconnect: true, // reconnect when the server stops the stream
  reconnectDelaysMs: [2000, 4000, 8000, 15000, 30000], // back-off; the last one repeats
  maxReconnectAttempts: 20,
  statsIntervalMs: 1000,
  fetch: null, // a fetch implementation (defaults to globalThis.fetch)
  apiKey: null, // sent as `Authorization: Bearer <apiKey>` on every request (server --api-key)
};

const TIMEOUT_HINT =
  "The network path between your browser and the server did not open. If the server is on " +
  "another network it needs a TURN relay (set TURN_URLS / TURN_USERNAME / TURN_CREDENTIAL or " +
  "HF_TOKEN on the server); a VPN or a firewall that blocks UDP can also cause this.";

const NO_KEY_HINT =
  "This server needs an API key: ask its operator for it, then pass it to the client " +
  "(new LiveV2VClient({apiKey}) or client.setApiKey(key)).";
const WRONG_KEY_HINT =
  "This server needs an API key and did not accept the one sent: check it with the server's " +
  "operator (the server was started with --api-key or LIVEV2V_API_KEY).";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A WebRTC session with a LiveV2V (or Daydream Scope) server.
 *
 * Events (an EventTarget; `e.detail` carries the data; `client.on(type, fn)` is a shortcut):
 *   state        {state, previous}   idle | connecting | connected | reconnecting | failed
 *   track        {stream}            the output MediaStream (show it in a <video>)
 *   connection   {state}             RTCPeerConnection.connectionState
 *   message      {...}               every server message, parsed
 *   parameters   {parameters}        `parameters_applied` (LiveV2V): the values in force after
 *                                    any accepted change, this client's own included
 *   changed      {parameters}        `parameters_updated`: changed from elsewhere (an HTTP route,
 *                                    another controller); only the keys that changed
 *   rejected     {error_message}     the server rejected an update (`error` message)
 *   stats        {...}               once a second: see getStats()
 *   stopped      {error_message, byServer, willReconnect}
 *   reconnecting {attempt, delayMs, reason}
 *   unauthorized {error, path, keySent}  any request was answered 401 (API key missing or wrong)
 *   error        {error}             a LiveV2VError that ended a connect or a reconnect
 */
export class LiveV2VClient extends EventTarget {
  constructor(options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    this.state = "idle";
    this.sessionId = null;
    this.pc = null;
    this.channel = null;
    this.outputStream = null;
    this.input = null;
    this.lastStats = null;
    this.serverStats = null;
    this.parameters = {}; // sticky values sent so far (initialParameters of a reconnect)
    this._pending = null; // updates waiting for the channel to open
    this._attempt = 0; // bumps on every connect/stop: stale async work checks it
    this._reconnects = 0;
    this._reconnectTimer = null;
    this._statsTimer = null;
    this._prevCounters = null;
  }

  /** The API key sent with every request (null: none). */
  get apiKey() {
    return this.options.apiKey || null;
  }

  /** Use another API key from the next request on (null or "" removes it). */
  setApiKey(key) {
    this.options.apiKey = key ? String(key) : null;
  }

  // --- small helpers ---------------------------------------------------------------------

  on(type, listener) {
    const wrapped = (event) => listener(event.detail, event);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", { state, previous });
  }

  /** Absolute URL of an API path ("api/v1/..."), relative to the page unless baseUrl is set. */
  url(path) {
    let base = this.options.baseUrl;
    if (base == null || base === "") {
      base = typeof document !== "undefined" ? document.baseURI : globalThis.location?.href;
    } else if (!base.endsWith("/")) {
      base += "/";
    }
    return new URL(path.replace(/^\/+/, ""), base).toString();
  }

  async _request(method, path, body) {
    const doFetch = this.options.fetch || globalThis.fetch.bind(globalThis);
    const headers = body === undefined ? {} : { "Content-Type": "application/json" };
    const apiKey = this.apiKey;
    if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
    let response;
    try {
      response = await doFetch(this.url(path), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (cause) {
      throw new LiveV2VError(`Cannot reach the server (${cause.message || cause}).`, {
        code: "network",
        hint: "Check that the server is running and reachable from this browser.",
        cause,
      });
    }
    if (response.status === 204) return { response, data: null };
    let data = null;
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { detail: text };
    }
    if (!response.ok) {
      const detail = data && data.detail !== undefined ? data.detail : text;
      const message = typeof detail === "string" ? detail : JSON.stringify(detail);
      if (response.status === 401) {
        const error = new LiveV2VError(
          apiKey ? "The server did not accept the API key." : "This server needs an API key.",
          { code: "unauthorized", status: 401, detail, hint: apiKey ? WRONG_KEY_HINT : NO_KEY_HINT },
        );
        error.keySent = !!apiKey;
        this._emit("unauthorized", { error, path, keySent: !!apiKey });
        throw error;
      }
      throw new LiveV2VError(message || `HTTP ${response.status}`, {
        code: classify(response.status, message),
        status: response.status,
        detail,
        hint: hintFor(response.status, message),
      });
    }
    return { response, data };
  }

  // --- the HTTP API --------------------------------------------------------------------

  async getIceServers() {
    const { data } = await this._request("GET", "api/v1/webrtc/ice-servers");
    return ((data && data.iceServers) || []).map((server) => {
      const entry = { urls: server.urls };
      if (server.username) entry.username = server.username;
      if (server.credential) entry.credential = server.credential;
      return entry;
    });
  }

  async getStatus() {
    return (await this._request("GET", "api/v1/pipeline/status")).data;
  }

  async getSchemas() {
    return ((await this._request("GET", "api/v1/pipelines/schemas")).data || {}).pipelines || {};
  }

  async loadPipeline(pipelineId, loadParams = {}) {
    const body = { pipeline_ids: [pipelineId], load_params: loadParams };
    return (await this._request("POST", "api/v1/pipeline/load", body)).data;
  }

  // --- LoRAs (docs/api.md#loras) ---------------------------------------------------------

  /** The LoRA files in the server's LoRA folder: `[{name, path, size_mb, folder, read_only}]`. */
  async listLoras() {
    return ((await this._request("GET", "api/v1/loras")).data || {}).lora_files || [];
  }

  /** Installs running now or finished lately: `[{id, filename, url, status, downloaded_bytes,
   * total_bytes, percentage, error}]`. */
  async getLoraDownloads() {
    return ((await this._request("GET", "api/v1/lora/downloads")).data || {}).downloads || [];
  }

  /**
   * Install a LoRA from a Hugging Face or CivitAI link into the LoRA folder. Resolves with the
   * installed file (`{name, path, size_mb, folder}`) once it is there; rejects with a
   * LiveV2VError whose message is the server's reason (host not allowed, 404, too large...).
   * The server answers only when done, so `onProgress(download)` is fed from
   * `GET /api/v1/lora/downloads` every `intervalMs` meanwhile.
   */
  async installLora(url, { filename = null, subfolder = null, onProgress = null, intervalMs = 500 } = {}) {
    const body = { url };
    if (filename) body.filename = filename;
    if (subfolder) body.subfolder = subfolder;
    let before = null;
    if (onProgress) {
      try {
        before = new Set((await this.getLoraDownloads()).map((d) => d.id));
      } catch {
        before = new Set();
      }
    }
    let done = false;
    const poll = async () => {
      while (!done) {
        await sleep(intervalMs);
        if (done) return;
        try {
          const mine = (await this.getLoraDownloads()).filter((d) => !before.has(d.id));
          const download = mine.find((d) => d.url === url) || mine[mine.length - 1];
          if (download && !done) onProgress(download);
        } catch {
          /* progress is best effort: the install's own answer says how it ended */
        }
      }
    };
    const polling = onProgress ? poll() : null;
    try {
      const { data } = await this._request("POST", "api/v1/loras", body);
      return data.file;
    } finally {
      done = true;
      if (polling) await polling.catch(() => {});
    }
  }

  /** Delete a file of the LoRA folder (name with or without extension, or a relative path). */
  async deleteLora(name) {
    return (await this._request("DELETE", `api/v1/loras/${name.split("/").map(encodeURIComponent).join("/")}`)).data;
  }

  /** Poll the pipeline status until it is loaded; `onProgress(status)` sees every poll. */
  async waitForPipeline({ onProgress = null, intervalMs = 500, timeoutMs = 600000 } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = await this.getStatus();
      if (onProgress) onProgress(status);
      if (status.status === "loaded") return status;
      if (status.status === "error") {
        throw new LiveV2VError(status.error || "The pipeline failed to load.", {
          code: "load_failed",
          detail: status,
          hint: "Check the load parameters (model id, resolution) and the server log.",
        });
      }
      if (status.status === "not_loaded") {
        throw new LiveV2VError("No pipeline is loaded.", { code: "not_loaded" });
      }
      if (Date.now() > deadline) {
        throw new LiveV2VError("The pipeline is still loading.", { code: "timeout" });
      }
      await sleep(intervalMs);
    }
  }

  // --- the stream ----------------------------------------------------------------------

  /**
   * Open a session. `input`: a MediaStream with a video track (webcam, screen, canvas), or
   * null for receive-only (text-to-video). Resolves once the connection is up; rejects with a
   * LiveV2VError (codes: not_loaded, busy, offer_rejected, timeout, network, aborted...).
   * The client never stops the input's tracks: the caller owns them.
   */
  async connect({ input = null, initialParameters = {} } = {}) {
    this._cancelReconnect();
    this._reconnects = 0;
    await this._teardown({ notifyServer: true });
    this.input = input;
    this.parameters = { ...stickyOf(initialParameters) };
    this._userStopped = false;
    await this._openOrFail();
  }

  /** `_open`, turning a failure (other than a cancel) into the "failed" state and an event. */
  async _openOrFail() {
    try {
      await this._open();
    } catch (error) {
      if (error.code !== "aborted") {
        this._setState("failed");
        this._emit("error", { error });
      }
      throw error;
    }
  }

  async _open() {
    const attempt = ++this._attempt;
    const alive = () => attempt === this._attempt;
    const abort = () => new LiveV2VError("Connecting was cancelled.", { code: "aborted" });
    this._setState("connecting");

    let iceServers = [];
    try {
      iceServers = await this.getIceServers();
    } catch (error) {
      if (error.code === "network" || error.code === "unauthorized") throw error;
      console.warn("LiveV2V: no ICE server list; using host candidates only", error);
    }
    if (!alive()) throw abort();

    const pc = new RTCPeerConnection({ iceServers });
    const channel = pc.createDataChannel("parameters", { ordered: true });
    this.pc = pc;
    this.channel = channel;
    this.sessionId = null;
    this.outputStream = null;
    this.serverStats = null;
    this._prevCounters = null;
    try {
      await this._negotiate(pc, channel, alive);
    } catch (error) {
      if (!alive()) throw error.code === "aborted" ? error : abort();
      await this._teardown({ notifyServer: true });
      throw error;
    }
    if (!alive()) throw abort();
    this._reconnects = 0;
    this._setState("connected");
    this._startStats();
  }

  async _negotiate(pc, channel, alive) {
    const abort = () => new LiveV2VError("Connecting was cancelled.", { code: "aborted" });
    const queued = [];
    let sessionId = null;
    const video = this.input ? this.input.getVideoTracks() : [];
    if (video.length) {
      for (const track of video) pc.addTrack(track, this.input);
    } else {
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    pc.ontrack = (event) => {
      if (event.track.kind !== "video") return;
      this.outputStream = event.streams[0] || new MediaStream([event.track]);
      this._emit("track", { stream: this.outputStream, track: event.track });
    };
    pc.onicecandidate = (event) => {
      if (!event.candidate || !event.candidate.candidate) return;
      const candidate = {
        candidate: event.candidate.candidate,
        sdpMid: event.candidate.sdpMid,
        sdpMLineIndex: event.candidate.sdpMLineIndex,
      };
      // Before the answer there is no session to send them to: queue, flush after it.
      if (sessionId) this._patch(sessionId, [candidate]);
      else queued.push(candidate);
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      this._emit("connection", { state: pc.connectionState });
      if (pc.connectionState === "failed" && this.state === "connected") {
        this._serverStopped("The connection to the server was lost.", pc);
      }
    };
    channel.onopen = () => this._flushPending();
    channel.onmessage = (event) => this._onMessage(event.data, pc);

    await pc.setLocalDescription(await pc.createOffer());
    if (!alive()) throw abort();

    const mode = this.parameters.input_mode || (video.length ? "video" : "text");
    const body = {
      sdp: pc.localDescription.sdp,
      type: pc.localDescription.type,
      initialParameters: { ...this.parameters, input_mode: mode },
    };
    let answer;
    const retryUntil = Date.now() + this.options.offerRetryMs;
    for (;;) {
      try {
        answer = (await this._request("POST", "api/v1/webrtc/offer", body)).data;
        break;
      } catch (error) {
        if (error.status !== 503 || Date.now() > retryUntil || !alive()) throw error;
        this._emit("waiting", { reason: error.message });
        await sleep(2000);
      }
    }
    if (!alive()) {
      this._delete(answer.sessionId);
      throw abort();
    }
    sessionId = answer.sessionId;
    this.sessionId = sessionId;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    for (const candidate of queued.splice(0)) this._patch(sessionId, [candidate]);
    await waitConnected(pc, this.options.connectTimeoutMs, alive);
  }

  _patch(sessionId, candidates) {
    this._request("PATCH", `api/v1/webrtc/offer/${encodeURIComponent(sessionId)}`, {
      candidates,
    }).catch((error) => {
      // 404: the session has gone; the stream_stopped message tells the rest.
      if (error.status !== 404 && error.status !== 401) console.warn("LiveV2V: ICE candidate not delivered", error);
    });
  }

  _delete(sessionId) {
    return this._request("DELETE", `api/v1/webrtc/offer/${encodeURIComponent(sessionId)}`).catch(
      () => {},
    );
  }

  _onMessage(raw, pc) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    if (!message || typeof message !== "object") return;
    this._emit("message", message);
    switch (message.type) {
      case "parameters_applied":
        this._emit("parameters", { parameters: message.parameters || {} });
        break;
      case "parameters_updated": // Scope's meaning: changed from elsewhere, never our own echo
        this._emit("changed", { parameters: message.parameters || {} });
        break;
      case "error":
        this._emit("rejected", { error_message: message.error_message });
        break;
      case "stats":
        this.serverStats = message;
        break;
      case "stream_stopped":
        this._serverStopped(message.error_message ?? null, pc);
        break;
      default: // unknown types are ignored (forward compatibility)
    }
  }

  /**
   * Send a parameter update (any keys of the `parameters` channel). Sent at once when the
   * channel is open; otherwise merged into one pending update sent when it opens. Sticky keys
   * are remembered and become the initialParameters of a reconnect.
   */
  send(params) {
    if (!params || typeof params !== "object") return false;
    Object.assign(this.parameters, stickyOf(params));
    if (this.channel && this.channel.readyState === "open") {
      this.channel.send(JSON.stringify(params));
      return true;
    }
    this._pending = { ...(this._pending || {}), ...params };
    return false;
  }

  _flushPending() {
    const pending = this._pending;
    this._pending = null;
    if (pending && this.channel && this.channel.readyState === "open") {
      this.channel.send(JSON.stringify(pending));
    }
  }

  /** Stop the stream: tells the server (DELETE), closes the connection. Idempotent. */
  async stop() {
    this._userStopped = true;
    this._cancelReconnect();
    this._attempt++;
    await this._teardown({ notifyServer: true });
    this._setState("idle");
  }

  async _teardown({ notifyServer }) {
    this._stopStats();
    const { pc, sessionId } = this;
    this.pc = null;
    this.channel = null;
    this.sessionId = null;
    this.outputStream = null;
    if (pc) {
      pc.ontrack = pc.onicecandidate = pc.onconnectionstatechange = null;
      try {
        pc.close();
      } catch {
        /* already closed */
      }
    }
    if (notifyServer && sessionId) await this._delete(sessionId);
  }

  _serverStopped(errorMessage, pc) {
    if (pc !== this.pc) return; // a message from a connection we already left
    const willReconnect = this.options.autoReconnect && !this._userStopped;
    this._attempt++;
    this._teardown({ notifyServer: true });
    this._emit("stopped", { error_message: errorMessage, byServer: true, willReconnect });
    if (willReconnect) this._scheduleReconnect(errorMessage);
    else this._setState("idle");
  }

  _scheduleReconnect(reason) {
    const input = this.input;
    const inputEnded = input && input.getVideoTracks().every((t) => t.readyState === "ended");
    if (inputEnded || this._reconnects >= this.options.maxReconnectAttempts) {
      this._setState("failed");
      const error = new LiveV2VError(
        inputEnded ? "The input video has ended." : "Could not reconnect to the server.",
        { code: inputEnded ? "input_ended" : "reconnect_failed", detail: reason },
      );
      this._emit("error", { error });
      return;
    }
    const delays = this.options.reconnectDelaysMs;
    const delayMs = delays[Math.min(this._reconnects, delays.length - 1)];
    this._reconnects++;
    this._setState("reconnecting");
    this._emit("reconnecting", { attempt: this._reconnects, delayMs, reason });
    this._reconnectTimer = setTimeout(async () => {
      this._reconnectTimer = null;
      try {
        await this._open();
      } catch (error) {
        if (error.code === "aborted" || this._userStopped) return;
        if (error.code === "unauthorized") {
          // Retrying cannot fix a missing or wrong key: stop here (the page asks for one).
          this._setState("failed");
          this._emit("error", { error });
          return;
        }
        this._emit("reconnecting-failed", { error });
        this._scheduleReconnect(error.message);
      }
    }, delayMs);
  }

  _cancelReconnect() {
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
  }

  /** Reconnect now (e.g. from a "Retry" button), keeping the input and the parameters. */
  async reconnect() {
    this._cancelReconnect();
    this._userStopped = false;
    await this._teardown({ notifyServer: true });
    await this._openOrFail();
  }

  // --- statistics ------------------------------------------------------------------------

  _startStats() {
    this._stopStats();
    const pc = this.pc;
    const tick = async () => {
      try {
        const stats = await this.getStats();
        if (stats && this.pc === pc) this._emit("stats", stats);
      } catch {
        /* the connection went away between ticks */
      }
    };
    this._statsTimer = setInterval(tick, this.options.statsIntervalMs);
    tick();
  }

  _stopStats() {
    if (this._statsTimer) clearInterval(this._statsTimer);
    this._statsTimer = null;
  }

  /**
   * What the browser measures (RTCPeerConnection.getStats) merged with the server's last
   * `stats` message: fps (received, decoded), bitrate in/out (kbit/s), RTT, jitter-buffer
   * delay, frames dropped (browser and server), an end-to-end latency estimate (ms).
   */
  async getStats() {
    const pc = this.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    const now = performance.now();
    let inbound = null;
    let outbound = null;
    let pair = null;
    let transport = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") inbound = s;
      else if (s.type === "outbound-rtp" && s.kind === "video") outbound = s;
      else if (s.type === "transport") transport = s;
    });
    if (transport && transport.selectedCandidatePairId) {
      pair = report.get(transport.selectedCandidatePairId);
    }
    if (!pair) {
      report.forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      });
    }
    const prev = this._prevCounters;
    const dt = prev ? (now - prev.time) / 1000 : 0;
    const rate = (value, key) =>
      prev && dt > 0 && value != null && prev[key] != null ? (value - prev[key]) / dt : null;
    const framesDecoded = inbound ? inbound.framesDecoded ?? 0 : 0;
    const bytesIn = inbound ? inbound.bytesReceived ?? 0 : 0;
    const bytesOut = outbound ? outbound.bytesSent ?? 0 : null;
    this._prevCounters = { time: now, framesDecoded, bytesIn, bytesOut };

    const fps = inbound && inbound.framesPerSecond != null
      ? inbound.framesPerSecond
      : rate(framesDecoded, "framesDecoded");
    const kbpsIn = rate(bytesIn, "bytesIn");
    const kbpsOut = rate(bytesOut, "bytesOut");
    const rttMs = pair && pair.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : null;
    const jitterBufferMs =
      inbound && inbound.jitterBufferEmittedCount
        ? (inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount) * 1000
        : null;
    const server = this.serverStats;
    const pipelineMs = server && server.pipeline_latency_ms != null ? server.pipeline_latency_ms : null;
    const parts = [rttMs, pipelineMs, jitterBufferMs].filter((v) => v != null);
    const stats = {
      connectionState: pc.connectionState,
      fps: fps ?? 0,
      framesDecoded,
      framesReceived: inbound ? inbound.framesReceived ?? 0 : 0,
      framesDroppedClient: inbound ? inbound.framesDropped ?? 0 : 0,
      packetsLost: inbound ? inbound.packetsLost ?? 0 : 0,
      frameWidth: inbound ? inbound.frameWidth ?? null : null,
      frameHeight: inbound ? inbound.frameHeight ?? null : null,
      bitrateKbps: kbpsIn == null ? null : (kbpsIn * 8) / 1000,
      uploadKbps: kbpsOut == null ? null : (kbpsOut * 8) / 1000,
      sentFps: outbound ? outbound.framesPerSecond ?? null : null,
      rttMs,
      jitterBufferMs,
      pipelineLatencyMs: pipelineMs,
      latencyMs: parts.length ? parts.reduce((a, b) => a + b, 0) : null,
      server,
      framesDroppedServer: server ? (server.frames_dropped ?? 0) + (server.frames_dropped_output ?? 0) : 0,
    };
    this.lastStats = stats;
    return stats;
  }
}

// --- helpers used by connect() ------------------------------------------------------------

const ONE_SHOT = new Set(["reset_cache", "transition"]);

/** The sticky part of an update: what a reconnect must send again. */
function stickyOf(params) {
  const out = {};
  for (const [key, value] of Object.entries(params || {})) {
    if (!ONE_SHOT.has(key)) out[key] = value;
  }
  // A transition ends on its target prompts: those are the prompts of a reconnect.
  if (params && params.transition && params.transition.target_prompts) {
    out.prompts = params.transition.target_prompts;
  }
  return out;
}

function classify(status, message) {
  if (status === 400 && /not loaded/i.test(message)) return "not_loaded";
  if (status === 503) return "busy";
  if (status === 400 || status === 422) return "offer_rejected";
  if (status === 404) return "not_found";
  return "http";
}

function hintFor(status, message) {
  if (status === 400 && /not loaded/i.test(message)) {
    return "Load a pipeline first (Pipeline panel, or POST /api/v1/pipeline/load).";
  }
  if (status === 400 && /text mode|input video/i.test(message)) {
    return "This pipeline needs an input video: choose the webcam, the screen or a video file.";
  }
  if (status === 503) return "The server is loading a pipeline or is at capacity; try again shortly.";
  return null;
}

function waitConnected(pc, timeoutMs, alive) {
  return new Promise((resolve, reject) => {
    if (pc.connectionState === "connected") return resolve();
    const done = (fn, value) => {
      clearTimeout(timer);
      pc.removeEventListener("connectionstatechange", check);
      fn(value);
    };
    const check = () => {
      if (!alive()) return done(resolve);
      if (pc.connectionState === "connected") done(resolve);
      else if (pc.connectionState === "failed" || pc.connectionState === "closed") {
        done(reject, new LiveV2VError("The connection to the server failed.", {
          code: "connection_failed",
          hint: TIMEOUT_HINT,
        }));
      }
    };
    const timer = setTimeout(() => {
      done(reject, new LiveV2VError(
        `The connection did not complete within ${Number((timeoutMs / 1000).toFixed(1))} s.`,
        { code: "timeout", hint: TIMEOUT_HINT },
      ));
    }, timeoutMs);
    pc.addEventListener("connectionstatechange", check);
  });
}

// --- inputs ---------------------------------------------------------------------------------

/** Video input devices (labels appear once the page has camera permission). */
export async function listCameras() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((d) => d.kind === "videoinput");
}

function mediaError(error, what) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return new LiveV2VError(`${what} access was blocked.`, {
      code: "permission",
      hint: what === "Camera"
        ? "Allow camera access for this site (the camera icon in the address bar), then press " +
          "Start again — or use a video file or text only."
        : "Screen capture needs your permission: press Start and pick a screen, window or tab.",
      cause: error,
    });
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return new LiveV2VError(`No ${what.toLowerCase()} was found.`, {
      code: "no_device",
      hint: "Connect a camera, or use a video file or text only.",
      cause: error,
    });
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return new LiveV2VError(`The ${what.toLowerCase()} could not be started.`, {
      code: "device_busy",
      hint: "Another application may be using it: close it and try again.",
      cause: error,
    });
  }
  if (!window.isSecureContext) {
    return new LiveV2VError(`${what} capture needs a secure page.`, {
      code: "insecure",
      hint: "Open the app over https:// or on http://localhost.",
      cause: error,
    });
  }
  return new LiveV2VError(`${what} error: ${error && error.message ? error.message : error}`, {
    code: "device_error",
    cause: error,
  });
}

/** The webcam at the pipeline's resolution: `{stream, stop()}`. */
export async function openCamera({ deviceId = null, width = 512, height = 512, frameRate = 20 } = {}) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw mediaError(new Error("no mediaDevices"), "Camera");
  }
  const video = {
    width: { ideal: width },
    height: { ideal: height },
    frameRate: { ideal: frameRate, max: 30 },
  };
  if (deviceId) video.deviceId = { exact: deviceId };
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
  } catch (error) {
    throw mediaError(error, "Camera");
  }
  return { stream, preview: stream, stop: () => stream.getTracks().forEach((t) => t.stop()) };
}

/**
 * Draw a <video> into a width×height canvas (centre crop, like object-fit: cover) and capture
 * it: the pipeline gets exactly its resolution whatever the source's size.
 */
export function canvasFromVideo(video, { width = 512, height = 512, frameRate = 20 } = {}) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { alpha: false });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  const draw = () => {
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    if (!vw || !vh || video.readyState < 2) return;
    const scale = Math.max(width / vw, height / vh);
    const sw = width / scale;
    const sh = height / scale;
    ctx.drawImage(video, (vw - sw) / 2, (vh - sh) / 2, sw, sh, 0, 0, width, height);
  };
  const timer = setInterval(draw, 1000 / frameRate);
  const stream = canvas.captureStream(frameRate);
  return {
    canvas,
    stream,
    stop() {
      clearInterval(timer);
      stream.getTracks().forEach((t) => t.stop());
    },
  };
}

/** A video file (File, Blob or URL), looping, as a width×height stream: `{stream, stop()}`. */
export async function openVideoFile(file, { width = 512, height = 512, frameRate = 20 } = {}) {
  const url = typeof file === "string" ? file : URL.createObjectURL(file);
  const video = document.createElement("video");
  video.muted = true;
  video.loop = true;
  video.playsInline = true;
  video.src = url;
  try {
    await new Promise((resolve, reject) => {
      video.onloadeddata = resolve;
      video.onerror = () => reject(video.error || new Error("unreadable"));
    });
    await video.play();
  } catch (cause) {
    if (typeof file !== "string") URL.revokeObjectURL(url);
    throw new LiveV2VError("This video file cannot be played by the browser.", {
      code: "bad_file",
      hint: "Use a WebM (VP8/VP9) or MP4 (H.264) file.",
      cause,
    });
  }
  const capture = canvasFromVideo(video, { width, height, frameRate });
  return {
    stream: capture.stream,
    preview: capture.stream,
    video,
    stop() {
      capture.stop();
      video.pause();
      video.removeAttribute("src");
      video.load();
      if (typeof file !== "string") URL.revokeObjectURL(url);
    },
  };
}

/** Screen / window / tab capture, fitted to width×height: `{stream, stop()}`. */
export async function openScreen({ width = 512, height = 512, frameRate = 20 } = {}) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) {
    throw new LiveV2VError("This browser cannot capture the screen.", { code: "unsupported" });
  }
  let display;
  try {
    display = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: frameRate, max: 30 } },
      audio: false,
    });
  } catch (error) {
    throw mediaError(error, "Screen");
  }
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.srcObject = display;
  await video.play();
  const capture = canvasFromVideo(video, { width, height, frameRate });
  const [track] = display.getVideoTracks();
  const out = {
    stream: capture.stream,
    preview: capture.stream,
    onended: null,
    stop() {
      capture.stop();
      display.getTracks().forEach((t) => t.stop());
    },
  };
  // "Stop sharing" in the browser's bar ends the display track: end ours too.
  track.addEventListener("ended", () => {
    capture.stop();
    if (out.onended) out.onended();
  });
  return out;
}

// --- output -----------------------------------------------------------------------------------

/** A PNG of the frame a <video> shows now. */
export function snapshot(video) {
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  if (!canvas.width || !canvas.height) return Promise.resolve(null);
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

/** MediaRecorder → WebM. `start(stream)`, then `await stop()` gives the Blob. */
export class Recorder {
  constructor() {
    this.recorder = null;
    this.chunks = [];
    this.startedAt = 0;
  }

  get recording() {
    return !!this.recorder && this.recorder.state === "recording";
  }

  start(stream) {
    const types = ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm"];
    const mimeType = types.find((t) => MediaRecorder.isTypeSupported(t)) || "";
    this.chunks = [];
    this.recorder = new MediaRecorder(stream, mimeType ? { mimeType } : {});
    this.recorder.ondataavailable = (e) => {
      if (e.data && e.data.size) this.chunks.push(e.data);
    };
    this.recorder.start(500);
    this.startedAt = performance.now();
  }

  stop() {
    const recorder = this.recorder;
    this.recorder = null;
    if (!recorder) return Promise.resolve(null);
    return new Promise((resolve) => {
      recorder.onstop = () => resolve(new Blob(this.chunks, { type: "video/webm" }));
      if (recorder.state !== "inactive") recorder.stop();
      else resolve(new Blob(this.chunks, { type: "video/webm" }));
    });
  }
}

/** Save a Blob as a file download. */
export function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.style.display = "none";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
