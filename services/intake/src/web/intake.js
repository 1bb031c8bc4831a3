// Confidant intake page: open the invitation from the link's fragment,
// verify the client with a one-time code, show the form and the privacy
// notice, check answers as they are typed, upload files, submit. The server
// checks everything again; its field messages appear next to the fields.
"use strict";

(function () {
  const state = { secret: "", token: "", form: null, notice: null, requestId: "" };
  const $ = (id) => document.getElementById(id);

  function show(id, visible) { $(id).hidden = !visible; }
  function status(text) { $("status").textContent = text; }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    let data = {};
    try { data = await response.json(); } catch (_) { data = {}; }
    return { ok: response.ok, status: response.status, data };
  }

  function newRequestId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // ---- the rules of a field, as the server applies them ----------------
  function number(s) { return /^-?\d+(\.\d+)?$/.test(s) ? Number(s) : NaN; }
  function isDate(s) {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(s)) return false;
    const d = new Date(s + "T00:00:00Z");
    return !isNaN(d) && d.toISOString().slice(0, 10) === s;
  }

  function check(field, raw) {
    const value = typeof raw === "string" ? raw.trim() : raw;
    if (field.kind === "file") {
      if (!value) return field.required ? "required" : "";
      if (field.media_types.length && !field.media_types.includes(value.type)) {
        return "must be one of: " + field.media_types.join(", ");
      }
      if (value.size === 0 || value.size > field.max_file_bytes) {
        return `1 to ${field.max_file_bytes} bytes`;
      }
      return "";
    }
    if (field.kind === "consent") {
      if (value === "true") return "";
      return field.required ? "must be given" : "";
    }
    if (value === "") return field.required ? "required" : "";
    switch (field.kind) {
      case "choice":
        return field.choices.includes(value) ? "" : "must be one of the listed choices";
      case "number": {
        const n = number(value);
        if (isNaN(n)) return "must be a decimal number";
        if (field.min_value && n < number(field.min_value)) return `must be at least ${field.min_value}`;
        if (field.max_value && n > number(field.max_value)) return `must be at most ${field.max_value}`;
        return "";
      }
      case "date":
        if (!isDate(value)) return "must be a date, YYYY-MM-DD";
        if (field.min_value && value < field.min_value) return `must be on or after ${field.min_value}`;
        if (field.max_value && value > field.max_value) return `must be on or before ${field.max_value}`;
        return "";
      default: break;
    }
    const chars = Array.from(value).length;
    if (chars < field.min_length) return `at least ${field.min_length} characters`;
    if (chars > field.max_length) return `at most ${field.max_length} characters`;
    if (field.kind === "email") {
      const at = value.indexOf("@");
      const domain = value.slice(at + 1);
      if (at < 1 || /\s/.test(value) || !domain.includes(".") || domain.startsWith(".") ||
          domain.endsWith(".") || domain.includes("@")) {
        return "must be an e-mail address";
      }
    }
    if (field.kind === "phone") {
      const digits = (value.match(/\d/g) || []).length;
      if (!/^\+?[\d -]+$/.test(value) || digits < 7 || digits > 15) {
        return "must be a telephone number: +, 7 to 15 digits, spaces or dashes";
      }
    }
    if (field.pattern) {
      let re = null;
      try { re = new RegExp("^(?:" + field.pattern + ")$", "u"); } catch (_) { re = null; }
      if (re && !re.test(value)) return "does not have the required format";
    }
    return "";
  }

  // ---- rendering ---------------------------------------------------------
  function inputFor(field) {
    let input;
    switch (field.kind) {
      case "choice":
        input = document.createElement("select");
        input.append(new Option("Choose…", ""));
        for (const c of field.choices) input.append(new Option(c, c));
        break;
      case "address":
        input = document.createElement("textarea");
        input.rows = 3;
        break;
      case "consent":
        input = document.createElement("input");
        input.type = "checkbox";
        break;
      case "file":
        input = document.createElement("input");
        input.type = "file";
        if (field.media_types.length) input.accept = field.media_types.join(",");
        break;
      default:
        input = document.createElement("input");
        input.type = { email: "email", phone: "tel", date: "date", number: "text" }[field.kind] || "text";
        if (field.kind === "number") input.inputMode = "decimal";
        if (field.kind === "email") input.autocomplete = "email";
        if (field.kind === "phone") input.autocomplete = "tel";
    }
    input.id = "f-" + field.name;
    input.name = field.name;
    if (field.required) input.setAttribute("aria-required", "true");
    input.setAttribute("aria-describedby", `e-${field.name}` + (field.help_text ? ` h-${field.name}` : ""));
    return input;
  }

  function valueOf(field) {
    const input = $("f-" + field.name);
    if (field.kind === "consent") return input.checked ? "true" : "false";
    if (field.kind === "file") return input.files && input.files[0] ? input.files[0] : null;
    return input.value;
  }

  function setError(name, message) {
    const input = $("f-" + name);
    const error = $("e-" + name);
    if (!input || !error) return false;
    error.textContent = message;
    input.setAttribute("aria-invalid", message ? "true" : "false");
    return true;
  }

  function validate(field) {
    const message = check(field, valueOf(field));
    setError(field.name, message);
    return message === "";
  }

  function renderForm() {
    const form = state.form;
    document.title = form.title;
    $("title").textContent = form.title;
    const container = $("fields");
    container.textContent = "";
    for (const field of form.fields) {
      const wrap = document.createElement("div");
      wrap.className = "field";
      const label = document.createElement("label");
      label.htmlFor = "f-" + field.name;
      label.textContent = field.label + (field.required ? " (required)" : "");
      const input = inputFor(field);
      const error = document.createElement("p");
      error.id = "e-" + field.name;
      error.className = "error";
      error.setAttribute("role", "alert");
      if (field.kind === "consent") {
        wrap.append(input, label);
      } else {
        wrap.append(label, input);
      }
      if (field.help_text) {
        const help = document.createElement("p");
        help.id = "h-" + field.name;
        help.className = "help";
        help.textContent = field.help_text;
        wrap.append(help);
      }
      wrap.append(error);
      container.append(wrap);
      const event = field.kind === "consent" || field.kind === "file" || field.kind === "choice" ? "change" : "input";
      input.addEventListener(event, () => {
        if (field.kind === "file") delete uploadIds[field.name];
        validate(field);
      });
      input.addEventListener("blur", () => validate(field));
    }
    $("notice").textContent = state.notice.text;
    $("accept-notice-label").textContent =
      `I have read and accept the privacy notice (version ${state.notice.version})`;
  }

  // ---- the steps -----------------------------------------------------------
  async function openInvitation() {
    const params = new URLSearchParams(location.hash.slice(1));
    state.secret = params.get("k") || "";
    // The secret stays out of the address bar and the history.
    history.replaceState(null, "", location.pathname);
    if (!state.secret) {
      status("Open the link the firm sent you to answer its form.");
      return;
    }
    const r = await post("/api/open", { secret: state.secret });
    if (!r.ok) {
      status(r.data.message || "This invitation cannot be opened.");
      return;
    }
    state.form = r.data.form;
    state.notice = r.data.notice;
    state.requestId = newRequestId();
    $("title").textContent = state.form.title;
    status("");
    show("verify", true);
  }

  async function sendCode() {
    $("code-error").textContent = "";
    const r = await post("/api/code", { secret: state.secret });
    if (!r.ok) {
      $("code-error").textContent = r.data.message || "The code could not be sent.";
      return;
    }
    state.verificationId = r.data.verification_id;
    $("code-hint").textContent = `We sent a code to ${r.data.hint}.`;
    show("code-step", true);
    $("code").focus();
  }

  async function checkCode() {
    const code = $("code").value.trim();
    if (!/^\d{6}$/.test(code)) {
      $("code-error").textContent = "Enter the 6 digits of the code.";
      $("code").setAttribute("aria-invalid", "true");
      return;
    }
    const r = await post("/api/verify", {
      secret: state.secret, verification_id: state.verificationId, code,
    });
    if (!r.ok) {
      $("code-error").textContent = r.data.message || "The code was not accepted.";
      $("code").setAttribute("aria-invalid", "true");
      return;
    }
    state.token = r.data.token;
    show("verify", false);
    renderForm();
    show("form", true);
    const first = $("fields").querySelector("input, select, textarea");
    if (first) first.focus();
  }

  // One idempotency key per file chosen: a retried upload of the same file
  // returns the first upload; choosing another file starts afresh.
  const uploadIds = {};
  function uploadId(name) {
    if (!uploadIds[name]) uploadIds[name] = newRequestId();
    return uploadIds[name];
  }

  async function uploadFile(field, file) {
    const response = await fetch("/api/upload", {
      method: "POST",
      headers: {
        "content-type": file.type || "application/octet-stream",
        "authorization": "Bearer " + state.token,
        "x-invitation-secret": state.secret,
        "x-field": field.name,
        "x-filename": encodeURIComponent(file.name),
        "x-request-id": uploadId(field.name),
      },
      body: file,
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    let data = {};
    try { data = await response.json(); } catch (_) { data = {}; }
    return { ok: response.ok, data };
  }

  function showViolations(violations) {
    let general = [];
    for (const v of violations || []) {
      const m = /^answers\[([a-z][a-z0-9_]*)\]$/.exec(v.field);
      if (m && setError(m[1], v.description)) continue;
      if (/^header\./.test(v.field)) { general.push(v.description); continue; }
      general.push(`${v.field}: ${v.description}`);
    }
    $("form-error").textContent = general.join(" ");
    const invalid = document.querySelector('[aria-invalid="true"]');
    if (invalid) invalid.focus();
  }

  async function submit(event) {
    event.preventDefault();
    $("form-error").textContent = "";
    let ok = true;
    for (const field of state.form.fields) ok = validate(field) && ok;
    const accepted = $("accept-notice").checked;
    $("accept-notice-error").textContent = accepted ? "" : "Accept the privacy notice to send your answers.";
    $("accept-notice").setAttribute("aria-invalid", accepted ? "false" : "true");
    if (!ok || !accepted) {
      const invalid = document.querySelector('[aria-invalid="true"]');
      if (invalid) invalid.focus();
      return;
    }
    $("submit").disabled = true;
    try {
      const answers = [];
      for (const field of state.form.fields) {
        const value = valueOf(field);
        if (field.kind === "file") {
          if (!value) continue;
          const r = await uploadFile(field, value);
          if (!r.ok) {
            setError(field.name, r.data.message || "The file was not accepted.");
            const v = (r.data.violations || []).map((x) => x.description).join(" ");
            if (v) setError(field.name, v);
            return;
          }
          answers.push({ field: field.name, value: r.data.upload_id });
        } else if (value !== "" && !(field.kind === "consent" && value === "false" && !field.required)) {
          answers.push({ field: field.name, value });
        }
      }
      const r = await post("/api/submit", {
        secret: state.secret,
        token: state.token,
        form_version: state.form.version,
        answers,
        accepted_privacy_notice_version: state.notice.version,
        request_id: state.requestId,
      });
      if (!r.ok) {
        if (r.data.violations) showViolations(r.data.violations);
        else $("form-error").textContent = r.data.message || "Your answers could not be sent.";
        return;
      }
      show("form", false);
      show("done", true);
      $("done").querySelector("h2").focus();
    } finally {
      $("submit").disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("send-code").addEventListener("click", sendCode);
    $("check-code").addEventListener("click", checkCode);
    $("form").addEventListener("submit", submit);
    $("done").querySelector("h2").tabIndex = -1;
    openInvitation();
  });
})();
