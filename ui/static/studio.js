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
const MAX_LORAS = 8; // the server loads at most 8
const LORA_KEYS = new Set(["loras", "lora_merge_mode"]); // set by the LoRA card, not the form

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
    // LoRAs: the folder's files, the picks for the next load ({scale, mode} by absolute path;
    // filled from what is loaded until the user edits them), the loaded adapters and the live
    // strength of the runtime ones for this session.
    this.loraFiles = [];
    this.loraPicks = new Map();
    this.loraPicksEdited = false;
    this.loadedLoras = [];
    this.loraScales = new Map();
    this.loraInstalling = false;
    this.loraDragging = null; // the slider under the pointer
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
    this.$("pipeline").addEventListener("change", () => {
      this.renderPipelineInfo();
      if (this.selectedSupportsLora()) this.refreshLoras();
    });
    this.$("lora-files").addEventListener("change", (e) => this.onLoraPick(e));
    this.$("lora-files").addEventListener("input", (e) => this.onLoraPickScale(e));
    this.$("lora-files").addEventListener("click", (e) => this.onLoraPickMode(e));
    this.$("lora-sliders").addEventListener("input", (e) => this.onLoraSlider(e));
    // A value from elsewhere must not move a slider under the user's pointer.
    this.$("lora-sliders").addEventListener("pointerdown", (e) => { this.loraDragging = e.target; });
    window.addEventListener("pointerup", () => { this.loraDragging = null; });
    window.addEventListener("pointercancel", () => { this.loraDragging = null; });
    this.$("lora-url").addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.installLora();
    });
    this.$("lora-url").addEventListener("input", () => { this.$("lora-install-error").textContent = ""; });
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
    c.on("rejected", ({ error_message }) => this.onRejected(error_message));
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
      "lora-refresh": () => this.refreshLoras(),
      "lora-install": () => this.installLora(),
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
    if (this.selectedSupportsLora() || this.loadedLoras.length) this.refreshLoras();
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
    } else if (previous && previous.status === "loading" && status.status === "loaded" && status.error) {
      // A LoRA-only change that failed in place: the previous LoRAs still serve.
      this.notice({
        tone: "warn",
        title: "The LoRA change failed",
        text: status.error,
        hint: "The pipeline keeps running with the LoRAs it had. Pick other LoRAs and load again.",
        kind: "load_failed",
      });
    } else if (previous && previous.status === "loading" && status.status === "loaded") {
      if (this.noticeKind === "loading") this.hideNotice();
    }
    this.applyLoraStatus(status);
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
    this.renderLoraCard();
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
      if (LORA_KEYS.has(key)) continue; // the LoRA card's
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
    const params = this.readLoadForm();
    if (this.selectedSupportsLora()) Object.assign(params, this.loraLoadParams());
    try {
      await this.client.loadPipeline(id, params);
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
    if (parameters.lora_scales) {
      const items = Array.isArray(parameters.lora_scales)
        ? parameters.lora_scales
        : Object.entries(parameters.lora_scales).map(([path, scale]) => ({ path, scale }));
      for (const item of items) {
        const adapter = this.loadedLoras.find((a) => sameLora(a.path, item.path));
        if (adapter && adapter.merge_mode === "runtime_peft") this.loraScales.set(adapter.path, Number(item.scale));
      }
      this.renderLoraSliders();
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
      ...(this.runtimeLoraScales().length ? { lora_scales: this.runtimeLoraScales() } : {}),
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

  // --- LoRAs ------------------------------------------------------------------------------------

  selectedSupportsLora() {
    const schema = this.schemas[this.$("pipeline").value];
    return !!schema && schema.supports_lora === true;
  }

  /** List the server's LoRA folder again (the files offered for the next load). */
  async refreshLoras() {
    try {
      this.loraFiles = await this.client.listLoras();
      this.loraListError = null;
    } catch (error) {
      if (error.code === "unauthorized") return; // the key prompt is up
      this.loraListError = `Could not list the LoRA folder: ${error.message}`;
    }
    this.renderLoraCard();
  }

  /** After a status: the loaded adapters (sliders) and, until the user edits them, the picks. */
  applyLoraStatus(status) {
    let loaded = this.loadedLoras;
    if (status.status === "loaded") loaded = status.loaded_lora_adapters || [];
    else if (status.status !== "loading") loaded = [];
    const before = JSON.stringify(this.loadedLoras);
    if (JSON.stringify(loaded) !== before) {
      this.loadedLoras = loaded;
      // A new load sets the strengths: the sliders (and this session) start from its scales.
      this.loraScales = new Map(loaded.filter((a) => a.merge_mode === "runtime_peft").map((a) => [a.path, a.scale]));
      if (this.client.state === "connected" && this.loraScales.size) {
        this.sendNow({ lora_scales: this.runtimeLoraScales() });
      } else {
        delete this.client.parameters.lora_scales; // a reconnect must not send the old ones
      }
      if (this.loadedLoras.length && !this.loraFiles.length) this.refreshLoras();
    }
    const forLoaded = status.pipeline_id && status.pipeline_id === this.$("pipeline").value;
    if (!this.loraPicksEdited && forLoaded && status.status === "loaded") {
      this.loraPicks = new Map(loaded.map((a) => [a.path, { scale: a.scale, mode: a.merge_mode }]));
    }
    this.renderLoraCard();
  }

  /** `lora_scales` for the runtime LoRAs: what the sliders show. */
  runtimeLoraScales() {
    return [...this.loraScales].map(([path, scale]) => ({ path, scale }));
  }

  /** `loras` and `lora_merge_mode` for the load request, from the picks. */
  loraLoadParams() {
    const loras = [...this.loraPicks].slice(0, MAX_LORAS).map(([path, pick]) => ({
      path,
      scale: pick.scale,
      merge_mode: pick.mode,
    }));
    const live = loras.some((l) => l.merge_mode === "runtime_peft");
    return { loras, lora_merge_mode: live ? "runtime_peft" : "permanent" };
  }

  renderLoraCard() {
    const card = this.$("lora-card");
    if (!card) return;
    const supported = this.selectedSupportsLora();
    card.hidden = !supported && !this.loadedLoras.length;
    const id = this.$("pipeline").value;
    const schema = this.schemas[id];
    const unsupported = this.$("lora-unsupported");
    unsupported.hidden = supported;
    unsupported.textContent = schema ? `“${schema.name || id}” does not load LoRAs.` : "";
    this.$("lora-files").hidden = !supported;
    this.$("lora-install").hidden = !supported;
    this.$("lora-empty").hidden = !supported || this.loraFiles.length > 0 || !!this.loraListError;
    this.renderLoraFiles(supported);
    this.renderLoraSliders();
    const count = supported ? Math.min(this.loraPicks.size, MAX_LORAS) : 0;
    const load = this.root.querySelector('[data-action="load"]');
    load.textContent = count ? `Load pipeline + ${count} LoRA${count > 1 ? "s" : ""}` : "Load pipeline";
  }

  /** The folder's files (and picked LoRAs that live elsewhere), each with its pick controls. */
  renderLoraFiles(supported) {
    const list = this.$("lora-files");
    const foot = this.$("lora-foot");
    list.innerHTML = "";
    if (!supported) {
      foot.textContent = "";
      return;
    }
    const rows = this.loraFiles.map((f) => ({ path: f.path, name: f.name, folder: f.folder, size: f.size_mb }));
    for (const path of this.loraPicks.keys()) {
      if (!rows.some((r) => sameLora(r.path, path))) rows.push({ path, name: loraStem(path), folder: null, size: null });
    }
    const full = this.loraPicks.size >= MAX_LORAS;
    for (const r of rows) {
      const pick = this.loraPicks.get(r.path);
      const row = document.createElement("div");
      row.className = "lv-lora-file";
      row.dataset.path = r.path;
      row.dataset.name = r.name;
      if (pick) row.dataset.picked = "";
      const label = document.createElement("label");
      label.className = "lv-lora-pick";
      label.title = r.path;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.role = "lora-pick";
      box.checked = !!pick;
      box.disabled = !pick && full;
      const name = document.createElement("span");
      name.className = "lv-lora-name";
      name.textContent = r.folder ? `${r.folder}/${r.name}` : r.name;
      const size = document.createElement("small");
      size.textContent = r.size == null ? "" : formatBytes(r.size * 1048576);
      label.append(box, name, size);
      row.appendChild(label);
      if (pick) {
        const opts = document.createElement("div");
        opts.className = "lv-lora-opts";
        const range = document.createElement("input");
        range.type = "range";
        range.min = "0";
        range.max = String(Math.max(2, pick.scale));
        range.step = "0.05";
        range.value = String(pick.scale);
        range.dataset.role = "lora-pick-scale";
        range.setAttribute("aria-label", `Strength of ${r.name} at load`);
        const out = document.createElement("output");
        out.textContent = pick.scale.toFixed(2);
        const modes = document.createElement("div");
        modes.className = "lv-segmented lv-segmented-sm";
        modes.setAttribute("role", "radiogroup");
        modes.setAttribute("aria-label", `How ${r.name} loads`);
        modes.dataset.role = "lora-mode";
        for (const [value, text, title] of [
          ["permanent", "Fused", "Fused into the weights: full speed, fixed strength (reload to change it)"],
          ["runtime_peft", "Live", "Kept as an adapter: its strength changes live, at some cost per frame"],
        ]) {
          const b = document.createElement("button");
          b.type = "button";
          b.setAttribute("role", "radio");
          b.dataset.value = value;
          b.textContent = text;
          b.title = title;
          b.setAttribute("aria-checked", String(pick.mode === value));
          modes.appendChild(b);
        }
        opts.append(range, out, modes);
        row.appendChild(opts);
      }
      list.appendChild(row);
    }
    const picked = this.loraPicks.size;
    foot.textContent = this.loraListError
      || (picked ? `${picked} picked · applied when you press Load pipeline` : rows.length ? "Tick LoRAs to load them with the pipeline." : "");
  }

  pickRow(e) {
    const row = e.target.closest(".lv-lora-file");
    return row ? { row, path: row.dataset.path } : null;
  }

  onLoraPick(e) {
    if (e.target.dataset.role !== "lora-pick") return;
    const { path } = this.pickRow(e);
    if (e.target.checked) this.loraPicks.set(path, { scale: 1, mode: "permanent" });
    else this.loraPicks.delete(path);
    this.loraPicksEdited = true;
    this.renderLoraCard();
  }

  onLoraPickScale(e) {
    if (e.target.dataset.role !== "lora-pick-scale") return;
    const { row, path } = this.pickRow(e);
    const pick = this.loraPicks.get(path);
    if (!pick) return;
    pick.scale = Number(e.target.value);
    row.querySelector("output").textContent = pick.scale.toFixed(2);
    this.loraPicksEdited = true;
  }

  onLoraPickMode(e) {
    const b = e.target.closest('[data-role="lora-mode"] button[data-value]');
    if (!b) return;
    const { row, path } = this.pickRow(e);
    const pick = this.loraPicks.get(path);
    if (!pick) return;
    pick.mode = b.dataset.value;
    this.loraPicksEdited = true;
    setRadio(row.querySelector('[data-role="lora-mode"]'), pick.mode);
  }

  /** One strength slider per loaded LoRA: live ones steer this session, fused ones are fixed. */
  renderLoraSliders() {
    const box = this.$("lora-sliders");
    this.$("lora-active").hidden = !this.loadedLoras.length;
    const signature = JSON.stringify(this.loadedLoras);
    if (box.dataset.signature === signature) {
      // Same LoRAs: update the values in place (rebuilding would drop a slider mid-drag).
      for (const row of box.querySelectorAll(".lv-lora-live[data-mode=live]")) {
        const range = row.querySelector("input");
        const scale = this.loraScales.get(row.dataset.path);
        if (scale === undefined || this.loraDragging === range) continue;
        range.value = String(scale);
        row.querySelector("output").textContent = scale.toFixed(2);
      }
      return;
    }
    box.dataset.signature = signature;
    box.innerHTML = "";
    for (const a of this.loadedLoras) {
      const live = a.merge_mode === "runtime_peft";
      const scale = live && this.loraScales.has(a.path) ? this.loraScales.get(a.path) : a.scale;
      const name = loraStem(a.path);
      const row = document.createElement("div");
      row.className = "lv-lora-live";
      row.dataset.path = a.path;
      row.dataset.mode = live ? "live" : "fused";
      const head = document.createElement("div");
      head.className = "lv-field-label";
      const title = document.createElement("span");
      title.className = "lv-lora-title";
      const label = document.createElement("span");
      label.className = "lv-lora-name";
      label.textContent = name;
      label.title = a.path;
      const tag = document.createElement("span");
      tag.className = live ? "lv-tag" : "lv-tag lv-tag-muted";
      tag.textContent = live ? "live" : "fused";
      title.append(label, tag);
      const out = document.createElement("output");
      out.textContent = scale.toFixed(2);
      head.append(title, out);
      const range = document.createElement("input");
      range.type = "range";
      range.min = String(Math.min(0, scale));
      range.max = String(Math.max(2, scale));
      range.step = "0.05";
      range.value = String(scale);
      range.dataset.role = "lora-scale";
      range.disabled = !live;
      range.setAttribute("aria-label", `Strength of ${name}`);
      row.append(head, range);
      if (!live) {
        const hint = document.createElement("small");
        hint.className = "lv-lora-hint";
        hint.textContent = "fused: reload to change";
        range.title = "Fused into the weights at load: pick Live and load again to change it while streaming";
        row.appendChild(hint);
      }
      box.appendChild(row);
    }
  }

  onLoraSlider(e) {
    if (e.target.dataset.role !== "lora-scale") return;
    const row = e.target.closest(".lv-lora-live");
    const scale = Number(e.target.value);
    this.loraScales.set(row.dataset.path, scale);
    row.querySelector("output").textContent = scale.toFixed(2);
    this.sendThrottled("lora", () => ({ lora_scales: this.runtimeLoraScales() }));
    const applied = this.$("lora-applied");
    applied.classList.remove("lv-flash");
    void applied.offsetWidth;
    applied.classList.add("lv-flash");
  }

  /** An `error` message on the channel: a rejected update (e.g. a fused LoRA's scale). */
  onRejected(message) {
    const lora = /lora/i.test(message || "");
    this.notice({
      tone: "warn",
      title: lora ? "The LoRA strength was not changed" : "The server rejected a change",
      text: message,
      hint: lora ? "Fused LoRAs keep the strength they were loaded with: pick Live and load again to steer them." : "",
      code: lora ? "lora_rejected" : "rejected",
    });
  }

  /** Install a LoRA from the link typed in the card, with progress; then pick it. */
  async installLora() {
    if (this.loraInstalling) return;
    const url = this.$("lora-url").value.trim();
    const filename = this.$("lora-filename").value.trim();
    const error = this.$("lora-install-error");
    error.textContent = "";
    if (!/^https?:\/\/\S+$/i.test(url)) {
      error.textContent = url ? "That is not an http(s) link." : "Paste the link of a LoRA file first.";
      this.$("lora-url").focus();
      return;
    }
    this.loraInstalling = true;
    const button = this.root.querySelector('[data-action="lora-install"]');
    button.disabled = true;
    this.$("lora-install-label").textContent = "Installing…";
    const progress = this.$("lora-progress");
    progress.hidden = false;
    this.$("lora-progress-fill").style.width = "4%";
    this.$("lora-progress-text").textContent = "Starting the download…";
    try {
      const file = await this.client.installLora(url, {
        filename: filename || null,
        onProgress: (d) => {
          const pct = Math.round(d.percentage || 0);
          this.$("lora-progress-fill").style.width = `${Math.max(4, pct)}%`;
          const total = d.total_bytes ? ` / ${formatBytes(d.total_bytes)} · ${pct}%` : "";
          this.$("lora-progress-text").textContent = `${d.filename} · ${formatBytes(d.downloaded_bytes)}${total}`;
        },
      });
      this.$("lora-url").value = "";
      this.$("lora-filename").value = "";
      if (file && file.path && this.loraPicks.size < MAX_LORAS) {
        this.loraPicks.set(file.path, { scale: 1, mode: "permanent" });
        this.loraPicksEdited = true;
      }
      await this.refreshLoras();
      this.notice({ tone: "ok", title: "LoRA installed", text: `${file ? file.name : "The file"} is in the LoRA folder and picked for the next load.`, autoHideMs: 5000 });
    } catch (e) {
      if (e.code === "unauthorized") {
        this.pendingAction = () => this.installLora();
      } else {
        error.textContent = loraInstallMessage(e);
      }
    } finally {
      this.loraInstalling = false;
      button.disabled = false;
      this.$("lora-install-label").textContent = "Install";
      progress.hidden = true;
    }
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

/** The same LoRA: equal paths, or one is the other's file name or name without extension. */
function sameLora(a, b) {
  if (a === b) return true;
  return baseName(a) === baseName(b) || loraStem(a) === loraStem(b);
}

/** A LoRA's name as the folder lists it: the file name without its extension. */
function loraStem(path) {
  return baseName(path).replace(/\.(safetensors|pt|pth|bin)$/i, "");
}

function baseName(path) {
  return String(path).split(/[\\/]/).pop();
}

function formatBytes(bytes) {
  const mb = bytes / 1048576;
  if (mb >= 1024) return `${(mb / 1024).toFixed(1)} GB`;
  if (mb >= 10) return `${Math.round(mb)} MB`;
  if (mb >= 1) return `${mb.toFixed(1)} MB`;
  return `${Math.max(1, Math.round(bytes / 1024))} KB`;
}

/** The server's reason for a failed install, with what to do where the reason alone does not say. */
function loraInstallMessage(error) {
  const hints = {
    403: " The host wants a token: set HF_TOKEN or CIVITAI_API_TOKEN on the server.",
    429: " Wait for one to finish.",
  };
  if (error.code === "network") return error.message;
  const text = Array.isArray(error.detail) ? formatValidation(error.detail) : error.message;
  return `Not installed: ${text}${hints[error.status] || ""}`;
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
