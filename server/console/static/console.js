// Lifeboat console: the few live parts of the pages. No framework; every
// call goes to /console/api/v1/…, the server's API through the session,
// with the session's CSRF token on writes.
"use strict";
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const API = "/console/api/v1";

  async function call(method, path, body) {
    const opts = { method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(API + path, opts);
    if (resp.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("logged out");
    }
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
    if (!resp.ok) {
      const err = new Error((data && data.error) || ("HTTP " + resp.status));
      err.status = resp.status;
      err.data = data;
      throw err;
    }
    return data;
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }

  function bytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }

  // Parts of a page marked data-refresh="ms" are fetched again from the
  // same URL while the server keeps marking them.
  for (const part of document.querySelectorAll("[data-refresh][id]")) {
    const every = Math.max(1000, parseInt(part.dataset.refresh, 10) || 2000);
    const tick = async () => {
      try {
        const resp = await fetch(location.href, { credentials: "same-origin" });
        if (resp.redirected && new URL(resp.url).pathname === "/login") { location.reload(); return; }
        const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
        const fresh = doc.getElementById(part.id);
        if (!fresh) return;
        part.innerHTML = fresh.innerHTML;
        if (!fresh.hasAttribute("data-refresh")) return;
      } catch (e) { /* try again next time */ }
      setTimeout(tick, every);
    };
    setTimeout(tick, every);
  }

  // ---- a job's live progress ----
  const job = document.getElementById("job");
  if (job) {
    const id = job.dataset.job;
    let last = null;
    const $ = (x) => document.getElementById(x);
    const poll = async () => {
      let d;
      try { d = await call("GET", "/jobs/" + id); } catch (e) { setTimeout(poll, 2000); return; }
      $("job-state").textContent = d.state;
      $("job-state").className = "pill " + ({ succeeded: "ok", running: "ok", queued: "warn", failed: "bad", canceled: "bad" }[d.state] || "muted");
      $("job-progress").value = d.progress || 0;
      $("job-pct").textContent = Math.round((d.progress || 0) * 100) + "%";
      $("job-bytes").textContent = bytes(d.bytes || 0);
      const now = Date.now();
      if (d.started) {
        const avg = (d.bytes || 0) / Math.max(0.001, ((d.finished ? Date.parse(d.finished) : now) - Date.parse(d.started)) / 1000);
        let rate = bytes(Math.round(avg)) + "/s average";
        if (last && !d.finished && now > last.t) {
          rate = bytes(Math.round(Math.max(0, (d.bytes - last.b) / ((now - last.t) / 1000)))) + "/s now · " + rate;
        }
        $("job-rate").textContent = rate;
        $("job-started").textContent = d.started.replace("T", " ").replace(/\..*$/, "").replace("Z", "");
      }
      last = { t: now, b: d.bytes || 0 };
      const log = (d.log || []).map((l) => l.time.substr(11, 8) + " " + l.level + " " + l.message).join("\n");
      $("job-log").textContent = log || "(no lines yet)";
      if (d.error) { $("job-error").hidden = false; $("job-error").textContent = d.error; }
      const done = ["succeeded", "failed", "canceled"].includes(d.state);
      if (done) {
        $("job-finished").textContent = (d.finished || "").replace("T", " ").replace(/\..*$/, "").replace("Z", "");
        $("job-result").textContent = d.result ? JSON.stringify(d.result, null, 2) : "(no result)";
        // The server words the next step; take it from a fresh copy of
        // this page.
        try {
          const resp = await fetch(location.href, { credentials: "same-origin" });
          const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
          const fresh = doc.getElementById("job-next");
          if (fresh) { $("job-next").innerHTML = fresh.innerHTML; }
        } catch (e) { $("job-next").textContent = d.state === "succeeded" ? "Done." : "Read the log for the reason."; }
        $("job-next").hidden = false;
        const cancel = document.getElementById("cancel");
        if (cancel) cancel.remove();
        document.body.dataset.jobDone = d.state;
        return;
      }
      setTimeout(poll, 1000);
    };
    if (job.dataset.done !== "true") setTimeout(poll, 300);
    else document.body.dataset.jobDone = "yes";
  }

  // ---- recovery: method chooser, preflight, start ----
  const form = document.getElementById("recovery-form");
  if (form) {
    const verdict = document.getElementById("verdict");
    const start = document.getElementById("start");
    const pre = document.getElementById("preflight");
    let checked = null; // the request the last OK verdict was for

    const request = () => {
      const f = new FormData(form);
      const r = { method: f.get("method"), point: form.dataset.point };
      for (const k of ["node", "dir", "name", "chain", "library"]) {
        const v = (f.get(k) || "").trim();
        const field = form.querySelector('[name="' + k + '"]');
        if (v && !field.closest("label").hidden) r[k] = v;
      }
      for (const k of ["new_identity", "discard_saved_state"]) {
        const field = form.querySelector('[name="' + k + '"]');
        if (field.checked && !field.closest("label").hidden) r[k] = true;
      }
      return r;
    };
    const showFields = () => {
      const m = form.querySelector('input[name="method"]:checked').value;
      for (const l of form.querySelectorAll("[data-for]")) {
        const show = l.dataset.for.split(" ").includes(m);
        if (l.tagName === "OPTION") { l.hidden = !show; if (!show && l.selected) l.parentElement.selectedIndex = -1; }
        else l.hidden = !show;
      }
      const node = document.getElementById("node");
      if (node.selectedIndex < 0 || node.options[node.selectedIndex].hidden) {
        const first = [...node.options].find((o) => !o.hidden);
        if (first) first.selected = true;
      }
    };
    const invalidate = () => {
      if (checked !== null) {
        checked = null;
        start.disabled = true;
        verdict.textContent = "";
        verdict.append(el("div", { class: "verdict wait" }, "The choices changed: run the preflight again."));
      }
    };
    form.addEventListener("change", () => { showFields(); invalidate(); });
    form.addEventListener("input", invalidate);
    form.addEventListener("submit", (e) => e.preventDefault());
    showFields();

    const render = (plan) => {
      verdict.textContent = "";
      const box = el("div", { class: "verdict " + (plan.ok ? "ok" : "bad"), "data-ok": String(!!plan.ok), "data-code": plan.code || "" });
      if (plan.ok) {
        box.append(el("h3", null, "✔ Ready: the preflight found nothing in the way"));
        const what = { original: "Recovery of the original instance", vm: "Recovery as a VM", folder: "Copy to a folder", tape: "Copy to tape" }[plan.method] || plan.method;
        box.append(el("p", null, `${what}: ${plan.vm || ""} on ${plan.node}` + (plan.dir ? ` into ${plan.dir}` : "") + ". Press Start recovery to run it."));
      } else {
        box.append(el("h3", null, "✘ Refused" + (plan.code ? " · " + plan.code : "")));
        box.append(el("p", { class: "message" }, plan.message || ""));
        if (plan.advice) box.append(el("p", { class: "advice" }, "What to do: " + plan.advice));
      }
      if (plan.checks && plan.checks.length) {
        const ul = el("ul");
        for (const c of plan.checks) ul.append(el("li", { class: c.ok ? "pass" : "fail" }, (c.ok ? "✔ " : "✘ ") + c.name + (c.detail ? ": " + c.detail : "")));
        box.append(ul);
      }
      if (plan.disks && plan.disks.length) {
        const ul = el("ul");
        for (const d of plan.disks) ul.append(el("li", null, `${d.file} → ${d.path} (${d.format}, ${bytes(d.bytes)})`));
        box.append(el("p", { class: "small" }, "Disks written:"), ul);
      }
      for (const n of plan.notes || []) box.append(el("p", { class: "small muted" }, n));
      verdict.append(box);
      box.scrollIntoView({ block: "nearest" });
    };

    pre.addEventListener("click", async () => {
      const req = request();
      pre.disabled = true;
      start.disabled = true;
      checked = null;
      verdict.textContent = "";
      verdict.append(el("div", { class: "verdict wait" }, "Checking on the agent… (a few seconds)"));
      try {
        const plan = await call("POST", "/recoveries/preflight", req);
        render(plan);
        if (plan.ok) { checked = JSON.stringify(req); start.disabled = false; }
      } catch (e) {
        render({ ok: false, code: (e.data && e.data.code) || "", message: e.message, advice: "correct the choices above and run the preflight again" });
      } finally {
        pre.disabled = false;
      }
    });
    start.addEventListener("click", async () => {
      const req = request();
      if (checked !== JSON.stringify(req)) { invalidate(); return; }
      start.disabled = true;
      try {
        const j = await call("POST", "/recoveries", req);
        location.href = "/jobs/" + j.id;
      } catch (e) {
        if (e.data && e.data.plan) render(e.data.plan);
        else render({ ok: false, message: e.message, advice: "run the preflight again" });
      }
    });
  }
})();
