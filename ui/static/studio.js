// The LiveV2V studio page: wires the markup of studio.html to the client in livev2v.js.
// Mounted by the Gradio page (ui/blocks.py); `mountStudio(element, {baseUrl})` works on any page
// that contains the same markup (option `apiKey`; else `#key=` in the address or this tab's
// sessionStorage, and the page asks for one when the server answers 401).

// The client is imported with this module's own query string (the page's cache-busting
// version), so both always come from the same release.
const lib = await import(new URL(`./livev2v.js${new URL(import.meta.url).search}`, import.meta.url));
const {
  LiveV2VClient,
  LiveV2VError,
  Recorder,
  download,
  listCameras,
  openCamera,
  openScreen,
  openVideoFile,
  snapshot,
} = lib;

const MAX_PROMPTS = 16;
const TEXT_DEBOUNCE_MS = 350;
const SLIDER_THROTTLE_MS = 80;
const KEY_STORAGE = "livev2v.apiKey"; // sessionStorage: this tab only, gone when it closes

export function mountStudio(root, options = {}) {
  const studio = new Studio(root, options);
  studio.init();
  return studio;
}

class Studio {
  constructor(root, { baseUrl = null, client = null, apiKey = null } = {}) {
    this.root = root;
    this.client = client || new LiveV2VClient({ baseUrl });
    // The API key (servers started with --api-key): given, from a shared link (#key=...),
    // or remembered for this tab. A 401 on any request shows the key prompt (lock()).
    const linkKey = takeKeyFromFragment();
    const key = apiKey || linkKey || loadKey();
    if (key) this.client.setApiKey(key);
    if (linkKey) saveKey(linkKey);
    this.keyFrom = key ? (apiKey ? "option" : linkKey ? "link" : "stored") : null;
    this.locked = false; // a request was answered 401: waiting for a key
    this.pendingAction = null; // what to do again once unlocked (Start, Load)
    this.schemas = {};
    this.status = null;
    this.source = "webcam";
    this.file = null;
    this.input = null; // {stream, preview, stop()} of the running input
    this.recorder = new Recorder();
    this.recTimer = null;
    this.touched = new Set(); // controls the user changed: defaults no longer overwrite them
    this.params = {
      prompts: [{ text: "a neon city at night", weight: 1 }],
      blend: "linear",
      transitionSteps: 0,
      stepList: [700, 500],
      noiseScale: 0.2,
      seed: 42,
      paused: false,
    };
    this.lastParameters = null; // the last parameters_applied payload: the values in force
    this.messages = []; // recent server messages (for debugging and tests)
    this.timers = {};
    this.statusTimer = null;
    this.statusAsked = 0; // status requests sent; answers older than the last applied are stale
    this.statusApplied = 0;
    this.reconnectPending = false; // the server stopped the stream and the client reconnects
    this.reconnectCountdown = null;
    this.run = 0; // bumps on stop: a start still opening its input gives up
    this.starting = false;
  }

  $(role) {
    return this.root.querySelector(`[data-role="${role}"]`);
  }

  // --- setup ---------------------------------------------------------------------------------

  init() {
    const r = this.root;
    r.addEventListener("click", (e) => this.onClick(e));
    this.$("source").addEventListener("click", (e) => {
      const button = e.target.closest("button[data-source]");
      if (button && !button.disabled) this.setSource(button.dataset.source);
    });
    this.$("file").addEventListener("change", (e) => {
      this.file = e.target.files && e.target.files[0] ? e.target.files[0] : null;
      this.$("file-name").textContent = this.file ? this.file.name : "No file chosen";
    });
    this.$("blend").addEventListener("click", (e) => {
      const b = e.target.closest("button[data-value]");
      if (!b) return;
      this.params.blend = b.dataset.value;
      this.touched.add("blend");
      setRadio(this.$("blend"), b.dataset.value);
      this.sendNow({ prompt_interpolation_method: this.params.blend });
    });
    this.$("transition").addEventListener("input", (e) => {
      this.params.transitionSteps = Number(e.target.value);
      this.renderTransition();
    });
    this.$("strength").addEventListener("input", () => this.onStepsChanged());
    this.$("steps").addEventListener("click", (e) => {
      const b = e.target.closest("button[data-value]");
      if (!b) return;
      setRadio(this.$("steps"), b.dataset.value);
      this.onStepsChanged();
    });
    this.$("noise").addEventListener("input", (e) => {
      this.params.noiseScale = Number(e.target.value);
      this.touched.add("noise");
      this.$("noise-value").textContent = this.params.noiseScale.toFixed(2);
      this.sendThrottled("noise", () => ({ noise_scale: this.params.noiseScale }));
    });
    this.$("seed").addEventListener("change", (e) => {
      const seed = Math.max(0, Math.floor(Number(e.target.value) || 0));
      e.target.value = seed;
      this.setSeed(seed);
    });
    this.$("pipeline").addEventListener("change", () => this.renderPipelineInfo());
    this.$("camera").addEventListener("change", () => this.touched.add("camera"));
    this.$("auth").addEventListener("submit", (e) => {
      e.preventDefault();
      this.unlock();
    });
    this.$("auth-key").addEventListener("input", () => {
      this.$("auth-key").removeAttribute("aria-invalid");
    });

    const c = this.client;
    c.on("unauthorized", ({ keySent }) => this.lock({ refused: keySent }));
    c.on("state", ({ state }) => this.onState(state));
    c.on("track", ({ stream }) => {
      const video = this.$("output-video");
      video.srcObject = stream;
      video.play().catch(() => {});
    });
    c.on("connection", ({ state }) => {
      this.root.querySelector('[data-stat="connection"]').textContent = state;
    });
    c.on("stats", (s) => this.renderStats(s));
    c.on("message", (m) => {
      this.messages.push(m);
      if (this.messages.length > 200) this.messages.splice(0, 100);
    });
    c.on("parameters", ({ parameters }) => {
      this.lastParameters = parameters;
      const applied = this.$("applied");
      applied.classList.remove("lv-flash");
      void applied.offsetWidth; // restart the animation
      applied.classList.add("lv-flash");
    });
    c.on("changed", ({ parameters }) => this.applyChangedElsewhere(parameters));
    c.on("rejected", ({ error_message }) =>
      this.notice({ tone: "warn", title: "The server rejected a change", text: error_message }),
    );
    c.on("stopped", (d) => this.onStopped(d));
    c.on("reconnecting", (d) => this.onReconnecting(d));
    c.on("error", ({ error }) => {
      if (error.code === "unauthorized") this.pendingAction = () => this.start();
      if (this.client.state === "failed" && error.code !== "aborted") {
        this.stopInput();
        this.showError(error);
      }
    });
    c.on("waiting", ({ reason }) => this.setPill("connecting", "Waiting for the server…", reason));

    this.renderPrompts();
    this.renderTransition();
    this.renderSteps();
    this.setSource("webcam");
    this.onState("idle");
    this.refresh().catch((e) => this.showError(e));
    listCameras().then((cams) => this.renderCameras(cams)).catch(() => {});
  }

  onClick(e) {
    const button = e.target.closest("[data-action]");
    if (!button || button.disabled) return;
    const action = button.dataset.action;
    const handlers = {
      start: () => this.toggle(),
      pause: () => this.togglePause(),
      snapshot: () => this.snapshot(),
      record: () => this.toggleRecord(),
      "add-prompt": () => this.addPrompt(),
      "remove-prompt": () => this.removePrompt(Number(button.dataset.index)),
      "random-seed": () => this.setSeed(Math.floor(Math.random() * 2 ** 31)),
      "reset-cache": () => this.sendNow({ reset_cache: true }),
      load: () => this.loadPipeline(),
      dismiss: () => this.hideNotice(),
      copy: () => this.copyLink(button),
    };
    if (handlers[action]) handlers[action]();
  }

  // --- WHIP / WHEP links (docs/production.md) ------------------------------------------------

  /** The session's WHEP URL (its output, for OBS or any WHEP player) and the WHIP URL to send
   * video in from OBS or GStreamer. */
  renderLinks(sessionId) {
    const whep = this.$("whep-url");
    const whepUrl = sessionId ? this.client.url(`api/v1/whep/${encodeURIComponent(sessionId)}`) : null;
    whep.textContent = whepUrl || "start a session first";
    whep.title = whepUrl || "";
    this.root.querySelector('[data-copy="whep-url"]').disabled = !whepUrl;
    const whip = this.$("whip-url");
    whip.textContent = this.client.url("api/v1/whip");
    whip.title = "Query parameters set the first prompt, e.g. ?prompt=an+oil+painting";
  }

  async copyLink(button) {
    const text = this.$(button.dataset.copy).textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      // No clipboard (an http page on another host): select the text for Ctrl+C instead.
      const range = document.createRange();
      range.selectNodeContents(this.$(button.dataset.copy));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Press Ctrl+C";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  // --- pipeline ------------------------------------------------------------------------------

  async refresh() {
    const [schemas, status] = await Promise.all([this.client.getSchemas(), this.orderedStatus()]);
    this.schemas = schemas;
    const select = this.$("pipeline");
    select.innerHTML = "";
    for (const [id, schema] of Object.entries(schemas)) {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = schema.name || id;
      option.title = id;
      select.appendChild(option);
    }
    const shown = status || this.status;
    if (shown && shown.pipeline_id && schemas[shown.pipeline_id]) select.value = shown.pipeline_id;
    if (shown) this.applyStatus(shown, { force: true });
    this.pollStatus();
  }

  pollStatus() {
    clearTimeout(this.statusTimer);
    if (this.locked) return; // no key: polling would only collect 401s (unlock() restarts it)
    const loading = this.status && this.status.status === "loading";
    this.statusTimer = setTimeout(async () => {
      if (this.locked) return;
      try {
        await this.fetchStatus();
      } catch {
        /* the server is restarting: keep the last status */
      }
      this.pollStatus();
    }, loading ? 400 : 5000);
  }

  /**
   * GET the pipeline status; null when a request sent later has already been answered. The
   * poll, a stop and a load can ask at once: an older answer ("loading") must never overwrite
   * a newer one ("error"), or the page would replay a transition that is over.
   */
  async orderedStatus() {
    const asked = ++this.statusAsked;
    const status = await this.client.getStatus();
    if (asked < this.statusApplied) return null;
    this.statusApplied = asked;
    return status;
  }

  /** Fetch the status and show it (stale answers are dropped). */
  async fetchStatus() {
    const status = await this.orderedStatus();
    if (status) this.applyStatus(status);
  }

  applyStatus(status, { force = false } = {}) {
    const previous = this.status;
    this.status = status;
    const changed =
      force ||
      !previous ||
      previous.status !== status.status ||
      previous.pipeline_id !== status.pipeline_id ||
      JSON.stringify(previous.load_params) !== JSON.stringify(status.load_params);

    const badge = this.$("pipeline-badge");
    badge.textContent = {
      loaded: status.pipeline_id,
      loading: `${status.pipeline_id} · loading`,
      error: `${status.pipeline_id} · failed`,
    }[status.status] || "no pipeline";
    badge.dataset.tone = status.status;
    badge.title = status.status === "error" ? status.error || "" : "Loaded pipeline";
    if (previous && previous.pipeline_id !== status.pipeline_id && this.schemas[status.pipeline_id]) {
      this.$("pipeline").value = status.pipeline_id; // loaded from elsewhere: follow it
    }

    const progress = this.$("progress");
    const loadButton = this.root.querySelector('[data-action="load"]');
    if (status.status === "loading") {
      progress.hidden = false;
      const pct = Math.round((status.progress || 0) * 100);
      this.$("progress-fill").style.width = `${Math.max(4, pct)}%`;
      this.$("progress-text").textContent = `${status.loading_stage || "Loading"} · ${pct}%`;
      loadButton.disabled = true;
    } else {
      progress.hidden = true;
      loadButton.disabled = false;
    }
    if (!changed) return;

    // A failed load also stops the streams: when the stop notice is up it already says why
    // (with the loader's message) and carries the reconnect; a second notice would bury it.
    if (previous && previous.status === "loading" && status.status === "error" && this.noticeKind !== "stopped") {
      this.notice({
        tone: "error",
        title: `Pipeline “${status.pipeline_id}” failed to load`,
        text: status.error || "Unknown error",
        hint: "Check the load parameters (model id, resolution) and the server log, then load again.",
        kind: "load_failed",
      });
    } else if (previous && previous.status === "loading" && status.status === "loaded") {
      if (this.noticeKind === "loading") this.hideNotice();
    }
    this.renderPipelineInfo();
    this.applyModeDefaults();
    this.renderSourceAvailability();
    const size = this.inputSize();
    this.$("input-size").textContent = `${size.width}×${size.height}`;
  }

  /** The schema of the pipeline loaded (or loading) now; null when none is usable. */
  loadedSchema() {
    const s = this.status;
    const usable = s && s.pipeline_id && (s.status === "loaded" || s.status === "loading");
    return usable ? this.schemas[s.pipeline_id] || null : null;
  }

  renderPipelineInfo() {
    const id = this.$("pipeline").value;
    const schema = this.schemas[id];
    const status = this.status || {};
    const stat = this.$("pipeline-status");
    if (id && id === status.pipeline_id) {
      const labels = { loaded: "Loaded", loading: "Loading…", error: "Failed", not_loaded: "" };
      stat.textContent = labels[status.status] || "";
      stat.dataset.tone = status.status;
    } else {
      stat.textContent = "";
      stat.dataset.tone = "";
    }
    this.$("pipeline-desc").textContent = schema ? schema.description || "" : "";
    const modes = this.$("pipeline-modes");
    modes.innerHTML = "";
    if (schema) {
      for (const mode of schema.supported_modes || []) {
        const chip = document.createElement("span");
        chip.className = "lv-tag";
        chip.textContent = mode === "text" ? "text → video" : "video → video";
        modes.appendChild(chip);
      }
      if (schema.supports_prompts === false) {
        const chip = document.createElement("span");
        chip.className = "lv-tag lv-tag-muted";
        chip.textContent = "no prompts";
        modes.appendChild(chip);
      }
    }
    this.renderLoadForm(id, schema);
    const loadedSchema = this.loadedSchema();
    const noPrompts = loadedSchema && loadedSchema.supports_prompts === false;
    this.$("prompt-note").hidden = !noPrompts;
    this.$("prompt-card").classList.toggle("lv-dim", !!noPrompts);
  }

  renderLoadForm(id, schema) {
    const form = this.$("load-form");
    form.innerHTML = "";
    if (!schema || !schema.load_schema) return;
    const props = schema.load_schema.properties || {};
    const current = this.status && this.status.pipeline_id === id ? this.status.load_params || {} : {};
    for (const [key, prop] of Object.entries(props)) {
      if (key === "vace_enabled" && !schema.supports_vace) continue;
      const value = current[key] !== undefined ? current[key] : prop.default;
      const field = document.createElement("label");
      field.className = "lv-load-field";
      const label = document.createElement("span");
      label.textContent = prop.title || key;
      if (prop.description) field.title = prop.description;
      let input;
      const type = prop.type || (prop.anyOf || []).map((t) => t.type).find((t) => t !== "null");
      if (prop.enum) {
        input = document.createElement("select");
        for (const v of prop.enum) {
          const o = document.createElement("option");
          o.value = v;
          o.textContent = v;
          input.appendChild(o);
        }
        input.value = value ?? "";
      } else if (type === "boolean") {
        input = document.createElement("input");
        input.type = "checkbox";
        input.checked = !!value;
        field.classList.add("lv-load-check");
      } else {
        input = document.createElement("input");
        if (type === "integer" || type === "number") {
          input.type = "number";
          if (prop.minimum !== undefined) input.min = prop.minimum;
          if (prop.maximum !== undefined && prop.maximum < 1e12) input.max = prop.maximum;
          input.step = prop.multipleOf || (type === "integer" ? 1 : "any");
        } else {
          input.type = "text";
          field.classList.add("lv-load-wide");
        }
        input.value = value ?? "";
        input.placeholder = prop.default == null ? "" : String(prop.default);
      }
      input.dataset.key = key;
      input.dataset.type = type || "string";
      field.append(label, input);
      form.appendChild(field);
    }
  }

  readLoadForm() {
    const params = {};
    for (const input of this.$("load-form").querySelectorAll("[data-key]")) {
      const { key, type } = input.dataset;
      if (type === "boolean") params[key] = input.checked;
      else if (input.value === "") continue;
      else if (type === "integer") params[key] = Math.round(Number(input.value));
      else if (type === "number") params[key] = Number(input.value);
      else params[key] = input.value;
    }
    return params;
  }

  async loadPipeline() {
    const id = this.$("pipeline").value;
    if (!id) return;
    this.hideNotice();
    try {
      await this.client.loadPipeline(id, this.readLoadForm());
    } catch (error) {
      if (error.code === "unauthorized") this.pendingAction = () => this.loadPipeline();
      this.showError(error, `Could not load “${id}”`);
      return;
    }
    this.noticeKind = "loading";
    await this.fetchStatus().catch(() => {});
    this.pollStatus();
  }

  /** Someone else (an HTTP route, another controller) changed this session's parameters:
   * show their values in the controls, as Scope's app does. */
  applyChangedElsewhere(parameters) {
    if (Array.isArray(parameters.prompts) && parameters.prompts.length) {
      this.params.prompts = parameters.prompts.map((p) => ({ text: p.text, weight: p.weight ?? 1 }));
      this.renderPrompts();
    }
    if (Array.isArray(parameters.denoising_step_list)) {
      this.params.stepList = parameters.denoising_step_list.slice();
      this.renderSteps();
    }
    if (typeof parameters.noise_scale === "number") {
      this.params.noiseScale = parameters.noise_scale;
      this.$("noise").value = parameters.noise_scale;
      this.$("noise-value").textContent = parameters.noise_scale.toFixed(2);
    }
  }

  /** Pipeline defaults for the current mode, for the controls the user has not touched. */
  applyModeDefaults() {
    const schema = this.loadedSchema();
    if (!schema || !schema.mode_defaults) return;
    const mode = this.source === "text" ? "text" : "video";
    const d = schema.mode_defaults[mode] || {};
    if (d.prompts && !this.touched.has("prompts")) {
      this.params.prompts = d.prompts.map((p) => ({ text: p.text, weight: p.weight ?? 1 }));
      this.renderPrompts();
    }
    if (d.denoising_step_list && !this.touched.has("steps")) {
      this.params.stepList = d.denoising_step_list.slice();
      this.renderSteps();
    }
    if (d.noise_scale !== undefined && !this.touched.has("noise")) {
      this.params.noiseScale = d.noise_scale;
      this.$("noise").value = d.noise_scale;
      this.$("noise-value").textContent = Number(d.noise_scale).toFixed(2);
    }
  }

  inputSize() {
    const p = (this.status && this.status.load_params) || {};
    return { width: p.width || 512, height: p.height || 512 };
  }

  supportsText() {
    const schema = this.loadedSchema();
    return !!schema && (schema.supported_modes || []).includes("text");
  }

  renderSourceAvailability() {
    const textButton = this.$("source").querySelector('[data-source="text"]');
    const ok = this.supportsText();
    const live = this.isActive();
    textButton.disabled = !ok || live;
    textButton.title = ok ? "Generate from the prompt alone" : "The loaded pipeline has no text mode";
    for (const b of this.$("source").querySelectorAll("button")) {
      if (b !== textButton) b.disabled = live;
    }
  }

  // --- input source --------------------------------------------------------------------------

  setSource(source) {
    const changedMode = (source === "text") !== (this.source === "text");
    this.source = source;
    this.root.querySelector(".lv-app").dataset.source = source;
    setRadio(this.$("source"), source, "source");
    const texts = {
      webcam: "Your camera appears here",
      screen: "Your screen appears here",
      file: "Your video appears here",
      text: "Text only — no input video",
    };
    this.$("input-placeholder-text").textContent = texts[source];
    if (changedMode) this.applyModeDefaults();
  }

  renderCameras(cameras) {
    const select = this.$("camera");
    const chosen = select.value;
    select.innerHTML = "";
    const first = document.createElement("option");
    first.value = "";
    first.textContent = "Default camera";
    select.appendChild(first);
    cameras.forEach((cam, i) => {
      if (!cam.deviceId) return;
      const o = document.createElement("option");
      o.value = cam.deviceId;
      o.textContent = cam.label || `Camera ${i + 1}`;
      select.appendChild(o);
    });
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
  }

  async openInput() {
    const size = { ...this.inputSize(), frameRate: 20 };
    if (this.source === "text") return null;
    if (this.source === "webcam") {
      const cam = await openCamera({ ...size, deviceId: this.$("camera").value || null });
      listCameras().then((c) => this.renderCameras(c)).catch(() => {});
      return cam;
    }
    if (this.source === "screen") {
      const screen = await openScreen(size);
      screen.onended = () => this.stop();
      return screen;
    }
    if (!this.file) {
      throw new LiveV2VError("Choose a video file first.", {
        code: "no_file",
        hint: "Press “Choose video…” below the videos, or drop in any WebM or MP4.",
      });
    }
    return openVideoFile(this.file, size);
  }

  stopInput() {
    if (this.input) this.input.stop();
    this.input = null;
    const video = this.$("input-video");
    video.srcObject = null;
    this.$("input-detail").textContent = "";
  }

  // --- start / stop ----------------------------------------------------------------------------

  isActive() {
    return ["connecting", "connected", "reconnecting"].includes(this.client.state);
  }

  toggle() {
    if (this.isActive() || this.starting) this.stop();
    else this.start();
  }

  async start() {
    if (this.starting) return;
    this.starting = true;
    try {
      await this._start();
    } finally {
      this.starting = false;
    }
  }

  async _start() {
    if (this.locked) {
      this.pendingAction = () => this.start(); // starts once the key is entered
      this.lock({ attention: true });
      return;
    }
    this.hideNotice();
    const prompts = this.validPrompts();
    if (!prompts) return;
    this.onState("connecting");
    const run = ++this.run;
    await this.refreshStatus(); // the input size and the text mode follow the loaded pipeline
    if (run !== this.run) return;
    if (this.locked) {
      this.onState("idle");
      this.pendingAction = () => this.start();
      return;
    }
    if (this.source === "text" && !this.supportsText()) {
      this.onState("idle");
      this.notice({
        tone: "warn",
        title: "Text only is not available",
        text: `The loaded pipeline (${this.status.pipeline_id}) needs an input video.`,
        hint: "Choose the webcam, the screen or a video file, or load a pipeline with a text mode.",
      });
      return;
    }
    let input;
    try {
      input = await this.openInput();
    } catch (error) {
      if (run !== this.run) return;
      this.onState("idle");
      this.showError(error);
      return;
    }
    if (run !== this.run) {
      if (input) input.stop(); // cancelled while the camera was opening
      return;
    }
    this.input = input;
    if (this.input) {
      const video = this.$("input-video");
      video.srcObject = this.input.preview;
      video.play().catch(() => {});
      const s = this.inputSize();
      this.$("input-detail").textContent = `${s.width}×${s.height}`;
    }
    try {
      await this.client.connect({
        input: this.input ? this.input.stream : null,
        initialParameters: this.initialParameters(prompts),
      });
    } catch (error) {
      if (error.code === "aborted") return;
      if (error.code === "unauthorized") this.pendingAction = () => this.start();
      this.stopInput();
      this.showError(error); // the client's "error" event has shown it too; same notice
    }
  }

  async stop() {
    this.run++;
    this.refreshStatus();
    this.clearReconnectCountdown();
    if (this.recorder.recording) await this.toggleRecord();
    await this.client.stop();
    this.stopInput();
    const out = this.$("output-video");
    out.srcObject = null;
    if (this.noticeKind === "stopped") this.hideNotice();
  }

  initialParameters(prompts) {
    const p = this.params;
    return {
      input_mode: this.source === "text" ? "text" : "video",
      prompts,
      prompt_interpolation_method: p.blend,
      denoising_step_list: p.stepList,
      noise_scale: p.noiseScale,
      seed: p.seed,
      paused: p.paused,
    };
  }

  onState(state) {
    const app = this.root.querySelector(".lv-app");
    app.dataset.state = state;
    const labels = {
      idle: "Start",
      connecting: "Cancel",
      connected: "Stop",
      reconnecting: "Stop",
      failed: "Start",
    };
    this.$("start-label").textContent = labels[state] || "Start";
    const tones = {
      idle: ["idle", "Idle"],
      connecting: ["connecting", "Connecting…"],
      connected: ["live", "Live"],
      reconnecting: ["connecting", "Reconnecting…"],
      failed: ["error", "Error"],
    };
    if (state === "connecting" && this.reconnectPending) tones.connecting = ["connecting", "Reconnecting…"];
    const [tone, text] = this.locked && !this.isActive() ? ["locked", "Locked"] : tones[state] || tones.idle;
    this.setPill(tone, text);
    this.$("output-placeholder-text").textContent =
      state === "reconnecting" || (state === "connecting" && this.reconnectPending)
        ? "Reconnecting…"
        : state === "connecting"
          ? "Connecting…"
          : "Press Start to stream";
    const session = this.root.querySelector('[data-stat="session"]');
    session.textContent = this.client.sessionId ? this.client.sessionId.slice(0, 8) : "not connected";
    session.title = this.client.sessionId || "";
    this.renderLinks(state === "connected" ? this.client.sessionId : null);
    if (state === "connected") {
      // Whatever the page showed about the stop (the stop notice, or a load failure that came
      // in while reconnecting) is over now: say so.
      if (this.reconnectPending) {
        this.notice({ tone: "ok", title: "Reconnected", text: "The stream is running again.", autoHideMs: 5000 });
      }
      this.reconnectPending = false;
      this.clearReconnectCountdown();
    }
    if (state === "idle" || state === "failed") {
      this.reconnectPending = false;
      this.$("output-video").srcObject = null;
      this.resetStats();
    }
    const live = state === "connected";
    if (!this.isActive() && this.params.paused) this.setPaused(false, { send: false });
    for (const action of ["snapshot", "record", "pause"]) {
      this.root.querySelector(`[data-action="${action}"]`).disabled = !live;
    }
    this.renderSourceAvailability();
  }

  setPill(tone, text, title = "") {
    const pill = this.$("pill");
    pill.dataset.tone = tone;
    pill.title = title;
    this.$("pill-text").textContent = text;
  }

  async refreshStatus() {
    try {
      await this.fetchStatus();
    } catch {
      /* unreachable: the next poll tries again */
    }
    this.pollStatus();
  }

  onStopped({ error_message: message, willReconnect }) {
    if (this.recorder.recording) this.toggleRecord();
    this.$("output-video").srcObject = null;
    this.resetStats();
    this.refreshStatus(); // a failed load stops streams: show the pipeline's new state now
    if (!willReconnect) this.stopInput();
    this.reconnectPending = willReconnect;
    this.noticeKind = "stopped";
    this.notice({
      tone: message ? "error" : "warn",
      title: message ? "The stream stopped" : "The server ended the stream",
      text: message || "The session was closed on the server.",
      hint: willReconnect ? "Reconnecting automatically…" : "",
      kind: "stopped",
      actions: willReconnect
        ? [
            { label: "Reconnect now", onClick: () => this.client.reconnect().catch(() => {}) },
            { label: "Stop", onClick: () => this.stop() },
          ]
        : [],
    });
  }

  onReconnecting({ attempt, delayMs, reason }) {
    this.clearReconnectCountdown();
    const until = Date.now() + delayMs;
    const tick = () => {
      const s = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      this.setPill("connecting", s > 0 ? `Reconnecting in ${s} s` : "Reconnecting…", reason || "");
      const hint = this.$("notice-hint");
      if (this.noticeKind === "stopped") {
        const last = attempt > 1 && reason ? ` Last try: ${reason}` : "";
        hint.textContent =
          (s > 0 ? `Reconnecting in ${s} s (attempt ${attempt})…` : `Reconnecting (attempt ${attempt})…`) + last;
      }
    };
    tick();
    this.reconnectCountdown = setInterval(tick, 250);
  }

  clearReconnectCountdown() {
    if (this.reconnectCountdown) clearInterval(this.reconnectCountdown);
    this.reconnectCountdown = null;
  }

  // --- steering ----------------------------------------------------------------------------------

  validPrompts() {
    const prompts = this.params.prompts
      .map((p) => ({ text: p.text.trim(), weight: Number(p.weight) }))
      .filter((p) => p.text);
    const warn = this.$("prompt-warning");
    if (!prompts.length) {
      warn.textContent = "Write a prompt";
      return null;
    }
    if (prompts.reduce((a, p) => a + p.weight, 0) <= 0) {
      warn.textContent = "Give a prompt some weight";
      return null;
    }
    warn.textContent = "";
    return prompts;
  }

  promptsChanged({ debounce = false } = {}) {
    this.touched.add("prompts");
    const send = () => {
      const prompts = this.validPrompts();
      if (!prompts) return;
      const steps = this.params.transitionSteps;
      if (steps > 0) {
        this.sendNow({
          transition: {
            target_prompts: prompts,
            num_steps: steps,
            temporal_interpolation_method: this.params.blend,
          },
        });
      } else {
        this.sendNow({ prompts });
      }
    };
    clearTimeout(this.timers.prompts);
    if (debounce) this.timers.prompts = setTimeout(send, TEXT_DEBOUNCE_MS);
    else send();
  }

  renderPrompts() {
    const list = this.$("prompts");
    list.innerHTML = "";
    const many = this.params.prompts.length > 1;
    this.params.prompts.forEach((p, i) => {
      const row = document.createElement("div");
      row.className = "lv-prompt-row";
      const text = document.createElement("textarea");
      text.rows = 2;
      text.value = p.text;
      text.placeholder = "Describe the look, e.g. “a watercolor painting, soft light”";
      text.dataset.role = "prompt-text";
      text.setAttribute("aria-label", `Prompt ${i + 1}`);
      text.addEventListener("input", () => {
        p.text = text.value;
        this.promptsChanged({ debounce: true });
      });
      const weightBox = document.createElement("div");
      weightBox.className = "lv-weight";
      const range = document.createElement("input");
      range.type = "range";
      range.min = "0";
      range.max = "2";
      range.step = "0.05";
      range.value = p.weight;
      range.dataset.role = "prompt-weight";
      range.setAttribute("aria-label", `Weight of prompt ${i + 1}`);
      const out = document.createElement("output");
      out.textContent = Number(p.weight).toFixed(2);
      range.addEventListener("input", () => {
        p.weight = Number(range.value);
        out.textContent = p.weight.toFixed(2);
        clearTimeout(this.timers.weight);
        this.timers.weight = setTimeout(() => this.promptsChanged(), SLIDER_THROTTLE_MS);
      });
      const wl = document.createElement("span");
      wl.textContent = "weight";
      weightBox.append(wl, range, out);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "lv-icon-btn lv-remove";
      remove.dataset.action = "remove-prompt";
      remove.dataset.index = String(i);
      remove.title = "Remove this prompt";
      remove.setAttribute("aria-label", `Remove prompt ${i + 1}`);
      remove.textContent = "✕";
      remove.disabled = !many;
      row.append(text, weightBox, remove);
      row.classList.toggle("lv-single", !many);
      list.appendChild(row);
    });
    this.root.querySelector('[data-action="add-prompt"]').disabled =
      this.params.prompts.length >= MAX_PROMPTS;
  }

  addPrompt() {
    if (this.params.prompts.length >= MAX_PROMPTS) return;
    this.params.prompts.push({ text: "", weight: 1 });
    this.touched.add("prompts");
    this.renderPrompts();
    const areas = this.$("prompts").querySelectorAll("textarea");
    areas[areas.length - 1].focus();
  }

  removePrompt(index) {
    if (this.params.prompts.length <= 1) return;
    this.params.prompts.splice(index, 1);
    this.renderPrompts();
    this.promptsChanged();
  }

  renderTransition() {
    const n = this.params.transitionSteps;
    this.$("transition-value").textContent = n === 0 ? "Instant" : `${n} frames`;
  }

  onStepsChanged() {
    const strength = Number(this.$("strength").value);
    const checked = this.$("steps").querySelector('[aria-checked="true"]');
    const count = Number(checked ? checked.dataset.value : 2);
    const top = Math.round(Math.min(1, Math.max(0.001, strength)) * 1000);
    const list = [];
    for (let i = 0; i < count; i++) {
      const t = Math.max(1, Math.round((top * (count - i)) / count));
      if (!list.length || t < list[list.length - 1]) list.push(t);
    }
    this.params.stepList = list;
    this.touched.add("steps");
    this.renderSteps();
    this.sendThrottled("steps", () => ({ denoising_step_list: this.params.stepList }));
  }

  renderSteps() {
    const list = this.params.stepList;
    this.$("steps-list").textContent = `[${list.join(", ")}]`;
    this.$("strength").value = (list[0] / 1000).toFixed(2);
    this.$("strength-value").textContent = (list[0] / 1000).toFixed(2);
    setRadio(this.$("steps"), String(Math.min(4, list.length)));
  }

  setSeed(seed) {
    this.params.seed = seed;
    this.$("seed").value = seed;
    this.sendNow({ seed });
  }

  togglePause() {
    this.setPaused(!this.params.paused);
  }

  setPaused(paused, { send = true } = {}) {
    this.params.paused = paused;
    const button = this.root.querySelector('[data-action="pause"]');
    button.setAttribute("aria-pressed", String(this.params.paused));
    this.$("pause-label").textContent = this.params.paused ? "Resume" : "Pause";
    this.$("live-label").textContent = this.params.paused ? "PAUSED" : "LIVE";
    this.root.querySelector(".lv-app").classList.toggle("lv-paused", this.params.paused);
    if (send) this.sendNow({ paused });
  }

  sendNow(update) {
    this.client.send(update); // queued until the channel opens; remembered for reconnects
  }

  sendThrottled(key, build) {
    if (this.timers[key]) return;
    this.timers[key] = setTimeout(() => {
      this.timers[key] = null;
      this.sendNow(build());
    }, SLIDER_THROTTLE_MS);
  }

  // --- output: stats, snapshot, record ----------------------------------------------------------

  renderStats(s) {
    const set = (name, text) => {
      const el = this.root.querySelector(`[data-stat="${name}"]`);
      if (el) el.textContent = text;
    };
    set("fps", (s.fps || 0).toFixed(1));
    set("latency", s.latencyMs == null ? "-" : `~${Math.round(s.latencyMs)} ms`);
    set("rtt", s.rttMs == null ? "-" : `${Math.round(s.rttMs)} ms`);
    set("bitrate", s.bitrateKbps == null ? "-" : formatBitrate(s.bitrateKbps));
    set("dropped", String((s.framesDroppedServer || 0) + (s.framesDroppedClient || 0)));
    set("connection", s.connectionState);
    const srv = s.server;
    set("server-fps", srv ? `${srv.fps_in.toFixed(1)} → ${srv.fps_out.toFixed(1)}` : "—");
    set("pipeline", s.pipelineLatencyMs == null ? "—" : `${Math.round(s.pipelineLatencyMs)} ms`);
    // Video models work in chunks: their latency includes waiting for the chunk's frames.
    set("pipeline-detail", srv && srv.chunk_frames > 1
      ? `chunk ${srv.chunk_frames} · wait ${Math.round(srv.chunk_wait_ms ?? 0)} ms`
      : "input → output");
    set("upload", s.uploadKbps == null ? "—" : formatBitrate(s.uploadKbps));
    set("jitter", s.jitterBufferMs == null ? "—" : `${Math.round(s.jitterBufferMs)} ms`);
    if (s.frameWidth) this.$("output-detail").textContent = `${s.frameWidth}×${s.frameHeight}`;
  }

  resetStats() {
    for (const [name, text] of Object.entries({
      fps: "0.0", latency: "-", rtt: "-", bitrate: "-", dropped: "0", connection: "new",
      "server-fps": "—", pipeline: "—", "pipeline-detail": "input → output", upload: "—", jitter: "—",
    })) {
      const el = this.root.querySelector(`[data-stat="${name}"]`);
      if (el) el.textContent = text;
    }
    this.$("output-detail").textContent = "";
  }

  async snapshot() {
    const blob = await snapshot(this.$("output-video"));
    if (blob) download(blob, `livev2v-${timestamp()}.png`);
  }

  async toggleRecord() {
    const button = this.root.querySelector('[data-action="record"]');
    const chip = this.$("rec-chip");
    if (this.recorder.recording) {
      clearInterval(this.recTimer);
      button.setAttribute("aria-pressed", "false");
      this.$("record-label").textContent = "Record";
      chip.hidden = true;
      const blob = await this.recorder.stop();
      if (blob && blob.size) download(blob, `livev2v-${timestamp()}.webm`);
      return;
    }
    const stream = this.client.outputStream;
    if (!stream) return;
    try {
      this.recorder.start(stream);
    } catch (error) {
      this.notice({ tone: "warn", title: "Recording is not available", text: String(error.message || error) });
      return;
    }
    button.setAttribute("aria-pressed", "true");
    this.$("record-label").textContent = "Stop recording";
    chip.hidden = false;
    const started = Date.now();
    const tick = () => {
      const s = Math.floor((Date.now() - started) / 1000);
      this.$("rec-time").textContent = `REC ${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    };
    tick();
    this.recTimer = setInterval(tick, 500);
  }

  // --- notices -----------------------------------------------------------------------------------

  // --- API key ---------------------------------------------------------------------------------

  /**
   * Show the key prompt: the server answered 401. `refused`: a key was sent and not accepted
   * (it is forgotten). Status polling pauses until unlock() succeeds.
   */
  lock({ refused = false, attention = false } = {}) {
    const wasLocked = this.locked;
    // Parallel requests with the same key each get a 401: the first one says it all.
    if (refused && !this.client.apiKey) refused = false;
    this.locked = true;
    clearTimeout(this.statusTimer);
    const app = this.root.querySelector(".lv-app");
    app.dataset.locked = "";
    const form = this.$("auth");
    const input = this.$("auth-key");
    const error = this.$("auth-error");
    form.hidden = false;
    if (refused) {
      error.textContent = {
        link: "The key in the link was not accepted. Check it with the person who shared it, or enter it here.",
        stored: "The saved key is no longer accepted. Enter the current key.",
      }[this.keyFrom] || "That key was not accepted. Check it and try again.";
      input.setAttribute("aria-invalid", "true");
      forgetKey();
      this.client.setApiKey(null);
      this.keyFrom = null;
    }
    if (refused || attention) {
      form.classList.remove("lv-shake");
      void form.offsetWidth; // restart the animation
      form.classList.add("lv-shake");
    }
    if (!this.isActive()) {
      this.setPill("locked", "Locked", "This server needs an API key");
      // A reconnect that got the 401 is over: its "Reconnecting…" notice would be stale.
      this.clearReconnectCountdown();
      if (this.noticeKind === "stopped") this.hideNotice();
    }
    if (document.activeElement !== input) input.focus({ preventScroll: wasLocked });
    if (refused) input.select();
  }

  /** Try the key typed in the prompt: reload the pipeline list and status with it. */
  async unlock() {
    const input = this.$("auth-key");
    const error = this.$("auth-error");
    const button = this.$("auth-submit");
    const key = input.value.trim();
    if (!key || !/^[\x20-\x7e]+$/.test(key)) {
      error.textContent = key
        ? "An API key can only contain letters, digits and ASCII punctuation."
        : "Enter the API key first.";
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    button.disabled = true;
    this.$("auth-submit-label").textContent = "Checking…";
    error.textContent = "";
    this.client.setApiKey(key);
    this.keyFrom = "typed";
    this.locked = false; // lets refresh() poll again; a 401 locks once more
    try {
      await this.refresh();
    } catch (e) {
      if (e.code !== "unauthorized") {
        // The key may be right: the server did not answer. Keep it and say what happened.
        saveKey(key);
        this.unlocked();
        this.showError(e);
      }
      return;
    } finally {
      button.disabled = false;
      this.$("auth-submit-label").textContent = "Unlock";
    }
    saveKey(key);
    this.unlocked();
    const pending = this.pendingAction;
    this.pendingAction = null;
    if (pending) pending();
    else this.notice({ tone: "ok", title: "Unlocked", text: "The API key is kept in this tab until you close it.", autoHideMs: 4000 });
  }

  unlocked() {
    this.locked = false;
    const form = this.$("auth");
    form.hidden = true;
    form.classList.remove("lv-shake");
    this.$("auth-key").value = "";
    this.$("auth-key").removeAttribute("aria-invalid");
    this.$("auth-error").textContent = "";
    delete this.root.querySelector(".lv-app").dataset.locked;
    this.onState(this.client.state);
  }

  showError(error, title = null) {
    const e = error instanceof LiveV2VError ? error : new LiveV2VError(String(error.message || error));
    if (e.code === "unauthorized") {
      this.lock({ refused: false }); // the "unauthorized" event has said whether a key was refused
      return;
    }
    const titles = {
      permission: "Camera access is blocked",
      no_device: "No camera found",
      device_busy: "The camera is busy",
      not_loaded: "No pipeline is loaded",
      timeout: "Could not connect",
      connection_failed: "Could not connect",
      network: "The server cannot be reached",
      busy: "The server is busy",
      bad_file: "Unsupported video file",
      no_file: "No video file chosen",
      input_ended: "The input ended",
      reconnect_failed: "Could not reconnect",
    };
    let text = e.message;
    if (Array.isArray(e.detail)) text = formatValidation(e.detail);
    if (e.code === "permission" && this.source === "screen") titles.permission = "Screen capture was not allowed";
    const actions = [];
    if (e.code === "not_loaded") {
      actions.push({
        label: "Load pipeline",
        onClick: () => {
          this.$("load-details").open = true;
          this.loadPipeline();
        },
      });
    } else if (["timeout", "connection_failed", "network", "busy", "reconnect_failed"].includes(e.code)) {
      actions.push({ label: "Try again", onClick: () => this.start() });
    } else if (e.code === "permission" || e.code === "no_device") {
      if (this.supportsText()) {
        actions.push({ label: "Use text only", onClick: () => { this.hideNotice(); this.setSource("text"); } });
      }
      actions.push({ label: "Use a video file", onClick: () => { this.hideNotice(); this.setSource("file"); } });
    }
    this.notice({
      tone: "error",
      title: title || titles[e.code] || "Something went wrong",
      text,
      hint: e.hint || "",
      code: e.code,
      actions,
    });
  }

  notice({ tone = "error", title = "", text = "", hint = "", actions = [], kind = null, code = "", autoHideMs = 0 }) {
    const box = this.$("notice");
    clearTimeout(this.timers.notice);
    box.hidden = false;
    box.dataset.tone = tone;
    box.dataset.code = code || "";
    this.noticeKind = kind;
    this.$("notice-title").textContent = title;
    this.$("notice-text").textContent = text;
    this.$("notice-hint").textContent = hint;
    const icons = { error: "!", warn: "!", ok: "✓", info: "i" };
    box.querySelector(".lv-notice-icon").textContent = icons[tone] || "!";
    const holder = this.$("notice-actions");
    holder.innerHTML = "";
    for (const action of actions) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "lv-btn lv-btn-small";
      b.textContent = action.label;
      b.addEventListener("click", action.onClick);
      holder.appendChild(b);
    }
    if (autoHideMs) this.timers.notice = setTimeout(() => this.hideNotice(), autoHideMs);
  }

  hideNotice() {
    this.$("notice").hidden = true;
    this.noticeKind = null;
  }
}

// --- small helpers ---------------------------------------------------------------------------------

/**
 * `#key=SECRET` in the page's address (a link a server operator shares): read once, then
 * removed from the address bar (other fragment parts stay).
 */
function takeKeyFromFragment() {
  const hash = window.location.hash.replace(/^#/, "");
  if (!hash) return null;
  const parts = hash.split("&");
  const index = parts.findIndex((p) => p.startsWith("key="));
  if (index < 0) return null;
  let key = parts[index].slice(4);
  try {
    key = decodeURIComponent(key);
  } catch {
    /* not %-encoded: take it as it is */
  }
  parts.splice(index, 1);
  const { pathname, search } = window.location;
  try {
    history.replaceState(history.state, "", pathname + search + (parts.length ? `#${parts.join("&")}` : ""));
  } catch {
    /* a sandboxed frame: the key stays in the address, it still works */
  }
  return key.trim() || null;
}

function loadKey() {
  try {
    return window.sessionStorage.getItem(KEY_STORAGE) || null;
  } catch {
    return null; // storage is blocked (privacy settings, sandboxed frame)
  }
}

function saveKey(key) {
  try {
    window.sessionStorage.setItem(KEY_STORAGE, key);
  } catch {
    /* blocked: the key lasts until the page is reloaded */
  }
}

function forgetKey() {
  try {
    window.sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    /* blocked */
  }
}

function setRadio(group, value, attr = "value") {
  for (const b of group.querySelectorAll("button[role=radio]")) {
    b.setAttribute("aria-checked", String(b.dataset[attr] === value));
  }
}

function formatBitrate(kbps) {
  return kbps >= 1000 ? `${(kbps / 1000).toFixed(1)} Mb/s` : `${Math.round(kbps)} kb/s`;
}

function formatValidation(detail) {
  return detail
    .map((d) => `${(d.loc || []).filter((x) => x !== "body" && x !== "load_params").join(".")}: ${d.msg}`)
    .join("; ");
}

function timestamp() {
  const d = new Date();
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}
