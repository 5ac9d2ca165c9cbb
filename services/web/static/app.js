/* doctag web UI: the little that needs a script (no framework, no inline code, CSP 'self').
   Uploads with per-file progress, live statuses polled with back-off, re-login in a dialog
   without leaving the page, keyboard navigation of the document list, confirmations.
   Every text from the server is put in the page with textContent, never as HTML. */
(function () {
  "use strict";

  var FINAL = { tagged: true, failed: true, gone: true };
  var STATUS_LABELS = { queued: "대기 중", processing: "처리 중", tagged: "태깅 완료", failed: "실패", gone: "삭제됨" };

  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function sizeText(bytes) {
    var units = ["B", "KB", "MB", "GB"], size = bytes, i = 0;
    while (size >= 1024 && i < units.length - 1) { size /= 1024; i++; }
    return i === 0 ? size + " B" : size.toFixed(1) + " " + units[i];
  }

  /* ---------------------------------------------------------------- session */
  var reloginWaiters = [];
  function relogin() {
    var dialog = document.getElementById("relogin");
    if (!dialog) {
      window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      return new Promise(function () {});
    }
    return new Promise(function (resolve) {
      reloginWaiters.push(resolve);
      if (!dialog.open) {
        dialog.showModal();
        document.getElementById("relogin-password").focus();
      }
    });
  }

  function setupRelogin() {
    var form = document.getElementById("relogin-form");
    if (!form) return;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var data = new FormData(form), error = document.getElementById("relogin-error");
      fetch("/login", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify({ tenant: data.get("tenant"), username: data.get("username"), password: data.get("password") })
      }).then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) {
          if (!res.ok) { error.textContent = res.body.message || "로그인하지 못했습니다."; error.hidden = false; return; }
          document.querySelector('meta[name="csrf-token"]').setAttribute("content", res.body.csrf);
          document.querySelectorAll('input[name="csrf"]').forEach(function (i) { i.value = res.body.csrf; });
          document.body.setAttribute("data-session-expires", String(res.body.expires_at));
          form.reset(); error.hidden = true;
          document.getElementById("relogin").close();
          scheduleExpiry();
          var waiters = reloginWaiters; reloginWaiters = [];
          waiters.forEach(function (w) { w(); });
        })
        .catch(function () { error.textContent = "서버에 연결할 수 없습니다."; error.hidden = false; });
    });
  }

  var expiryTimer = null;
  function scheduleExpiry() {
    var expires = parseInt(document.body.getAttribute("data-session-expires") || "0", 10);
    if (!expires) return;
    if (expiryTimer) clearTimeout(expiryTimer);
    var wait = Math.max(0, expires * 1000 - Date.now());
    expiryTimer = setTimeout(function () { relogin(); }, Math.min(wait, 2147483000));
  }

  /* JSON request that asks for a re-login on 401 and then tries once more. */
  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } }).then(function (r) {
      if (r.status === 401) return relogin().then(function () { return getJSON(url); });
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }

  /* ---------------------------------------------------------------- live statuses */
  function StatusPoller(onUpdate) {
    this.ids = {};
    this.delay = 1000;
    this.timer = null;
    this.onUpdate = onUpdate;
  }
  StatusPoller.prototype.watch = function (id, status) {
    if (!FINAL[status]) { this.ids[id] = status; this.delay = 1000; this.schedule(); }
  };
  StatusPoller.prototype.schedule = function () {
    var self = this;
    if (self.timer || Object.keys(self.ids).length === 0) return;
    self.timer = setTimeout(function () { self.timer = null; self.poll(); }, self.delay);
  };
  StatusPoller.prototype.poll = function () {
    var self = this, ids = Object.keys(self.ids).slice(0, 50);
    if (!ids.length) return;
    var query = ids.map(function (i) { return "id=" + encodeURIComponent(i); }).join("&");
    getJSON("/documents/status?" + query).then(function (body) {
      var changed = false;
      body.items.forEach(function (item) {
        if (self.ids[item.id] !== item.status) changed = true;
        if (FINAL[item.status]) delete self.ids[item.id]; else self.ids[item.id] = item.status;
        self.onUpdate(item);
      });
      /* Back-off: poll quickly while something changes, then less and less often (max 15 s). */
      self.delay = changed ? 1000 : Math.min(15000, Math.round(self.delay * 1.6));
      self.schedule();
    }).catch(function () {
      self.delay = Math.min(15000, self.delay * 2);
      self.schedule();
    });
  };

  function badge(status, label) {
    var b = el("span", "badge badge-" + status, label || STATUS_LABELS[status] || status);
    b.setAttribute("data-status", status);
    return b;
  }

  function renderTags(cell, tags) {
    cell.textContent = "";
    (tags || []).forEach(function (t) { cell.appendChild(el("span", "chip" + (t.source === "user" ? " chip-user" : ""), t.tag)); });
  }

  /* ---------------------------------------------------------------- upload */
  function setupUpload() {
    var input = document.getElementById("files"), zone = document.getElementById("dropzone");
    if (!input || !zone) return;
    var panel = document.getElementById("upload-panel"), rows = document.getElementById("upload-rows");
    var template = document.getElementById("upload-row"), overall = document.getElementById("overall-progress");
    var summary = document.getElementById("upload-summary"), banner = document.getElementById("quota-banner");
    var queue = [], active = 0, CONCURRENCY = 2, items = [], byId = {};
    var poller = new StatusPoller(function (item) {
      (byId[item.id] || []).forEach(function (entry) { showStatus(entry, item.status, item.status_label, item.error, item.error_detail); renderTags(entry.tags, item.tags); });
      updateSummary();
    });

    function updateOverall() {
      var total = 0, sent = 0;
      items.forEach(function (it) { total += it.file.size || 1; sent += it.sent; });
      overall.value = total ? Math.round(sent * 100 / total) : 0;
    }
    function updateSummary() {
      var counts = { done: 0, failed: 0, refused: 0 };
      items.forEach(function (it) {
        if (it.state === "tagged" || it.state === "duplicate") counts.done++;
        else if (it.state === "failed") counts.failed++;
        else if (it.state === "refused") counts.refused++;
      });
      summary.textContent = items.length + "개 중 완료 " + counts.done + " · 실패 " + counts.failed + " · 거부 " + counts.refused;
    }
    function showStatus(entry, status, label, message, detail) {
      entry.state = status;
      entry.statusCell.replaceChildren(badge(status, label));
      entry.statusCell.appendChild(el("p", "file-message", message || ""));
      if (detail) entry.statusCell.appendChild(el("p", "file-message muted", detail));
      entry.row.setAttribute("data-status", status);
    }

    function add(files) {
      panel.hidden = false;
      Array.prototype.forEach.call(files, function (file) {
        var row = template.content.firstElementChild.cloneNode(true);
        row.querySelector(".file-name").textContent = file.name;
        row.querySelector(".file-size").textContent = sizeText(file.size);
        var entry = { file: file, row: row, sent: 0, state: "sending", progress: row.querySelector("progress"),
                      statusCell: row.querySelector(".file-status"), tags: row.querySelector(".file-tags") };
        entry.progress.setAttribute("aria-label", file.name + " 전송률");
        rows.appendChild(row);
        items.push(entry);
        queue.push(entry);
      });
      updateSummary();
      pump();
    }

    function pump() {
      while (active < CONCURRENCY && queue.length) { active++; send(queue.shift()); }
    }

    function finish(entry, status, body) {
      var doc = body.document || body;
      if (status === 401) { return relogin().then(function () { send(entry); }); }
      active--;
      if (status === 202 || status === 200) {
        entry.progress.value = 100;
        if (body.quota && document.getElementById("quota-used")) {
          document.getElementById("quota-used").textContent = sizeText(body.quota.used_bytes);
          document.getElementById("quota-available").textContent = sizeText(body.quota.available_bytes);
        }
        if (body.quota && body.quota.warning && banner) {
          var pct = Math.floor(body.quota.used_bytes * 100 / body.quota.quota_bytes);
          banner.textContent = "부서 저장 용량의 " + pct + "%를 사용 중입니다. 필요 없는 문서를 정리하거나 관리자에게 용량 증설을 요청하세요.";
          banner.hidden = false;
        }
        var link = el("a", null, "");
        link.href = "/documents/" + encodeURIComponent(doc.id);
        link.textContent = entry.file.name;
        entry.row.querySelector(".file-name").replaceChildren(link);
        (byId[doc.id] = byId[doc.id] || []).push(entry);
        if (status === 200 && doc.duplicate) {
          showStatus(entry, "duplicate", "이미 있는 문서", "같은 내용의 문서가 이미 있어 새로 저장하지 않았습니다.");
          renderTags(entry.tags, doc.tags);
        } else {
          showStatus(entry, doc.status, STATUS_LABELS[doc.status], "");
          poller.watch(doc.id, doc.status);
        }
      } else {
        entry.progress.value = 0;
        showStatus(entry, "refused", "거부됨", body.message || "업로드하지 못했습니다.");
      }
      updateSummary();
      pump();
    }

    function send(entry) {
      var form = new FormData();
      form.append("file", entry.file, entry.file.name);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", "/upload");
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          entry.sent = entry.file.size * e.loaded / e.total;
          entry.progress.value = Math.round(e.loaded * 100 / e.total);
          updateOverall();
        }
      });
      xhr.addEventListener("load", function () {
        var body = {};
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = { message: "서버 응답을 읽을 수 없습니다." }; }
        entry.sent = entry.file.size;
        updateOverall();
        finish(entry, xhr.status, body);
      });
      xhr.addEventListener("error", function () {
        active--;
        showStatus(entry, "refused", "거부됨", "서버에 연결할 수 없습니다. 네트워크를 확인하세요.");
        pump();
      });
      xhr.send(form);
    }

    input.addEventListener("change", function () { if (input.files.length) add(input.files); input.value = ""; });
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.add("is-over"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.remove("is-over"); });
    });
    zone.addEventListener("drop", function (e) { if (e.dataTransfer && e.dataTransfer.files.length) add(e.dataTransfer.files); });
  }

  /* ---------------------------------------------------------------- documents list */
  function setupDocumentList() {
    var table = document.getElementById("doc-table");
    if (!table) return;
    var rows = Array.prototype.slice.call(table.querySelectorAll("tbody tr"));
    var poller = new StatusPoller(function (item) {
      var row = table.querySelector('tr[data-id="' + item.id + '"]');
      if (!row) return;
      row.setAttribute("data-status", item.status);
      row.querySelector(".doc-status").replaceChildren(badge(item.status, item.status_label));
      renderTags(row.querySelector(".doc-tags"), item.tags);
    });
    rows.forEach(function (row) { poller.watch(row.getAttribute("data-id"), row.getAttribute("data-status")); });

    var current = -1;
    function focusRow(i) {
      if (!rows.length) return;
      current = Math.max(0, Math.min(rows.length - 1, i));
      rows.forEach(function (r, j) { r.classList.toggle("is-current", j === current); });
      rows[current].querySelector("a").focus();
    }
    document.addEventListener("keydown", function (e) {
      var tag = (e.target && e.target.tagName) || "";
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || e.altKey || e.ctrlKey || e.metaKey) return;
      var inTable = table.contains(document.activeElement);
      if (e.key === "j" || (e.key === "ArrowDown" && inTable)) { e.preventDefault(); focusRow(current + 1); }
      else if (e.key === "k" || (e.key === "ArrowUp" && inTable)) { e.preventDefault(); focusRow(current - 1); }
    });
    table.addEventListener("focusin", function (e) {
      var row = e.target.closest("tr");
      var i = rows.indexOf(row);
      if (i >= 0) { current = i; rows.forEach(function (r, j) { r.classList.toggle("is-current", j === i); }); }
    });
  }

  /* ---------------------------------------------------------------- one document */
  function setupDocumentView() {
    var live = document.getElementById("doc-live");
    if (!live || FINAL[live.getAttribute("data-status")]) return;
    var poller = new StatusPoller(function (item) {
      if (FINAL[item.status]) { window.location.reload(); return; }
      live.querySelector(".doc-status").replaceChildren(badge(item.status, item.status_label));
    });
    poller.watch(live.getAttribute("data-id"), live.getAttribute("data-status"));
  }

  /* ---------------------------------------------------------------- live numbers */
  /* Polls `url` with back-off (5 s while the answer changes, ×1.5 each quiet poll up to 60 s,
     longer after errors); stops while the tab is hidden and polls at once when it is shown again,
     and for good when `apply` returns false. Only text changes in place, so nothing moves. */
  function livePoll(url, apply) {
    var MIN = 5000, MAX = 60000, delay = MIN, timer = null, last = null, busy = false, stopped = false;
    function schedule() {
      if (timer || stopped || document.hidden) return;
      timer = setTimeout(function () { timer = null; poll(); }, delay);
    }
    function poll() {
      if (document.hidden || busy || stopped) return;
      busy = true;
      getJSON(url).then(function (body) {
        busy = false;
        var key = JSON.stringify(body);
        delay = key !== last ? MIN : Math.min(MAX, Math.round(delay * 1.5));
        last = key;
        if (apply(body) === false) { stopped = true; return; }
        schedule();
      }).catch(function () {
        busy = false;
        delay = Math.min(MAX * 2, delay * 2);
        schedule();
      });
    }
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { if (timer) { clearTimeout(timer); timer = null; } return; }
      delay = MIN;
      if (!timer) poll();
    });
    schedule();
  }

  function setText(id, text) {
    var node = document.getElementById(id);
    if (node && node.textContent !== text) node.textContent = text;
  }

  function nowText() {
    return new Date().toLocaleTimeString("ko-KR", { hour12: false }) + " 기준";
  }

  /* ---------------------------------------------------------------- tagging queue numbers */
  /* The lists change on a reload, and the note says when they differ from what the page shows. */
  function setupQueueLive() {
    var stats = document.getElementById("queue-stats");
    if (!stats || !window.fetch) return;
    var shownFailed = stats.getAttribute("data-failed-ids") || "";
    var shownDead = stats.getAttribute("data-dead-ids") || "";
    var fmt = function (n) { return Number(n).toLocaleString("ko-KR"); };
    livePoll(stats.getAttribute("data-live"), function (body) {
      setText("stat-queued", fmt(body.queued));
      setText("stat-processing", fmt(body.processing));
      setText("stat-failed", fmt(body.failed));
      setText("stat-rate", fmt(body.tagged_last_hour));
      setText("stat-per-minute", String(body.tagged_per_minute));
      setText("stat-failed-hour", String(body.failed_last_hour));
      setText("stat-oldest", body.oldest_queued_at ? "가장 오래된 것 " + body.oldest_queued_at : "\u00a0");
      var box = document.getElementById("stat-failed-box");
      if (box) box.classList.toggle("stat-warn", body.failed > 0);
      if (body.broker) {
        setText("broker-jobs", fmt(body.broker.jobs_waiting));
        setText("broker-workers", String(body.broker.workers));
        setText("broker-dead", fmt(body.broker.dead_lettered));
      }
      var listsChanged = body.failed_ids.join(" ") !== shownFailed ||
        body.dead_letter_ids.map(function (i) { return i || ""; }).join(" ") !== shownDead;
      setText("queue-live-note", listsChanged ? "실패·데드레터 목록이 바뀌었습니다. 새로 고침하면 볼 수 있습니다." : "");
      setText("queue-live-time", "숫자는 자동으로 갱신됩니다 · " + nowText());
    });
  }

  /* ---------------------------------------------------------------- training jobs */
  /* While a job is active, /admin/training-jobs/live's numbers replace each shown job's state,
     stage, progress, loss, times and heartbeat age in place. The list says when a job ended or a
     new one appeared (a reload would lose a half-filled form); one job's page reloads when its job
     ends, to show the result. Polling stops once nothing shown is active. */
  function setupJobsLive() {
    var box = document.getElementById("jobs-table") || document.getElementById("job-live");
    if (!box || !box.getAttribute("data-live") || !window.fetch) return;
    var single = box.id === "job-live";
    var shown = {};
    box.querySelectorAll("[data-job]").forEach(function (node) {
      var state = node.querySelector(".job-state");
      if (state) shown[node.getAttribute("data-job")] = state.getAttribute("data-state");
    });
    function set(node, cls, text) {
      var target = node.querySelector("." + cls);
      if (target && target.textContent !== text) target.textContent = text;
    }
    livePoll(box.getAttribute("data-live"), function (body) {
      var ended = false, appeared = false, active = false;
      body.jobs.forEach(function (job) {
        var nodes = box.querySelectorAll('[data-job="' + job.id + '"]');
        if (!nodes.length) { if (!single) appeared = true; return; }
        if (job.active) active = true;
        if (shown[job.id] && shown[job.id] !== job.state && !job.active) ended = true;
        nodes.forEach(function (node) {
          var state = node.querySelector(".job-state");
          if (state) {
            state.textContent = job.state_label;
            state.setAttribute("data-state", job.state);
            state.className = "badge badge-job-" + job.state.toLowerCase() + " job-state";
          }
          set(node, "job-stage", job.stage);
          set(node, "job-position", job.position);
          set(node, "job-loss", job.loss);
          set(node, "job-elapsed", job.elapsed);
          set(node, "job-eta", job.eta);
          set(node, "job-heartbeat", job.heartbeat);
          set(node, "job-attempts", job.attempts);
          var bar = node.querySelector(".job-progress");
          if (bar && job.percent !== null) bar.value = job.percent;
        });
      });
      if (single && ended) { window.location.reload(); return false; }
      var notes = [];
      if (ended) notes.push("끝난 작업이 있습니다. 새로 고침하면 결과를 볼 수 있습니다.");
      if (appeared) notes.push("새 작업이 있습니다. 새로 고침하면 볼 수 있습니다.");
      setText("jobs-live-note", notes.join(" "));
      setText("jobs-live-time", active ? "상태가 자동으로 갱신됩니다 · " + nowText()
        : "진행 중인 작업이 없어 자동 갱신을 멈췄습니다 · " + nowText());
      return active;
    });
  }

  /* ---------------------------------------------------------------- confirmations */
  function setupConfirm() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
  }

  /* ---------------------------------------------------------------- copy a value (a new API key) */
  function setupCopy() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var input = document.getElementById(button.getAttribute("data-copy"));
        var status = document.getElementById("copy-status");
        if (!input) return;
        input.select();
        var done = function (ok) { if (status) status.textContent = ok ? "복사했습니다." : "복사하지 못했습니다. 직접 선택해 복사하세요."; };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(input.value).then(function () { done(true); }, function () { done(false); });
        } else {
          done(false);
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupRelogin();
    scheduleExpiry();
    setupUpload();
    setupDocumentList();
    setupDocumentView();
    setupQueueLive();
    setupJobsLive();
    setupConfirm();
    setupCopy();
  });
})();
