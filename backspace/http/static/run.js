// One run, live: its events from GET /api/runs/{id}/events, each shown once (deduped by seq).
// Without an API key the browser's EventSource follows the stream (and resumes by itself with
// Last-Event-ID); with one, fetch() reads it, since EventSource cannot send the header.
"use strict";

const runId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const runUrl = "/api/runs/" + encodeURIComponent(runId);
const eventsUrl = runUrl + "/events";
const $ = (id) => document.getElementById(id);
const FINISHED = ["succeeded", "no_changes", "failed", "cancelled", "timed_out"];
// The stages of a run in order (Stage in backspace/orchestrator/events.py), for the timeline.
const STAGES = [
  ["sandbox", "Sandbox"], ["cloning", "Clone"], ["setup", "Setup"], ["agent", "Agent"],
  ["validating", "Check"], ["verifying", "Verify"], ["pushing", "Push"], ["pr", "Pull request"],
];
const BLOCKED_SHOWN = 50; // a command retrying forever must not grow the page without end

let lastSeq = 0;
let finished = false;
let source = null;
let prDraft = false;
let blockedCount = 0;
let family = null; // GET /api/runs/{id}'s `family`: the runs of this run's pull request
let familyBusy = false;
let familyAgain = false;

function setStatus(status) {
  const badge = $("status");
  badge.textContent = status.replace("_", " ");
  badge.className = "status status-" + status;
  const done = FINISHED.includes(status);
  if (done) finished = true;
  const cancel = $("cancel");
  if (done) {
    cancel.disabled = true;
    cancel.hidden = true;
  } else if (cancel.dataset.state !== "cancelling") {
    cancel.disabled = false;
  }
}

function showPullRequest(url) {
  const safe = safeUrl(url);
  if (!safe) return;
  $("pr").replaceChildren(prDraft ? "Draft pull request: " : "Pull request: ",
    el("a", { href: safe, id: "pr-link" }, safe));
  $("pr").hidden = false;
}

function showUsage(event) {
  $("tokens").textContent = Number(event.input_tokens || 0).toLocaleString() + " in · "
    + Number(event.output_tokens || 0).toLocaleString() + " out";
  $("cost").textContent = formatCost(event.cost_usd);
}

function drawStages() {
  $("stages").replaceChildren(...STAGES.map(([stage, label]) =>
    el("li", { "data-stage": stage }, el("span", { class: "stage-label" }, label),
      el("span", { class: "stage-detail" }))));
}

// Stages before the current one are done (or skipped, when the run never entered them).
function reachStage(stage, message) {
  const index = STAGES.findIndex(([name]) => name === stage);
  if (index < 0) return;
  STAGES.forEach(([name], i) => {
    const li = document.querySelector(`#stages li[data-stage="${name}"]`);
    if (i < index) li.className = li.className === "" ? "skipped" : "done";
    if (i < index) li.removeAttribute("aria-current");
  });
  const li = document.querySelector(`#stages li[data-stage="${stage}"]`);
  li.className = "current";
  li.setAttribute("aria-current", "step");
  if (message) li.querySelector(".stage-detail").textContent = String(message);
}

function endStages(status) {
  const li = document.querySelector("#stages li.current");
  if (!li) return;
  li.className = status === "succeeded" || status === "no_changes" ? "done" : "stopped";
  li.removeAttribute("aria-current");
}

function where(event) {
  return String(event.host) + ":" + String(event.port);
}

function showBlocked(event) {
  $("network").hidden = false;
  blockedCount += 1;
  if (blockedCount > BLOCKED_SHOWN) {
    const more = blockedCount - BLOCKED_SHOWN;
    const line = document.querySelector("#blocked li.more")
      || $("blocked").appendChild(el("li", { class: "more meta" }));
    line.textContent = "and " + more + " more (all are in the events below)";
    return;
  }
  $("blocked").append(el("li", {},
    el("code", {}, where(event)), " in the " + event.phase + " phase",
    event.command ? el("span", {}, " by ", el("code", {}, event.command)) : null,
    event.reason ? el("span", { class: "meta" }, ": " + event.reason) : null,
    el("div", { class: "hint" }, event.hint || "")));
}

function showReceipt(event) {
  const passed = event.passed === true;
  $("verification").hidden = false;
  $("verification-result").textContent = passed ? "Verification passed" : "Verification FAILED";
  $("verification-result").className = passed ? "verdict-ok" : "verdict-bad";
  const blocked = Array.isArray(event.blocked) ? event.blocked.length : 0;
  $("verification-facts").textContent = "In the " + event.environment + " environment, on tree "
    + String(event.tree).slice(0, 12) + (blocked ? " · " + blocked + " blocked network attempt(s)" : "");
  const draft = !passed && event.draft === true;
  $("verification-draft").hidden = !draft;
  $("verification-draft").textContent = draft
    ? "The pull request opened as a draft because verification failed." : "";
  const commands = Array.isArray(event.commands) ? event.commands : [];
  $("receipt").tBodies[0].replaceChildren(...commands.map((c) => {
    const bad = c.timed_out || c.exit_code !== 0;
    const tail = c.output_tail ? el("details", { open: bad }, el("summary", {}, "last lines"), el("pre", {}, c.output_tail))
      : el("span", { class: "meta" }, "(no output)");
    return el("tr", {},
      el("td", {}, el("code", {}, c.command)),
      el("td", { class: "num" + (bad ? " exit-bad" : "") }, String(c.exit_code) + (c.timed_out ? " (timed out)" : "")),
      el("td", { class: "num" }, formatDuration(c.duration_ms)),
      el("td", {}, tail));
  }));
}

// The pull request conversation: every run of the family, oldest first, this one marked.
function familyRow(run) {
  const current = run.id === runId;
  const status = String(run.status);
  const request = String(run.prompt ?? "");
  return el("li", { "data-run-id": run.id, "aria-current": current ? "page" : null },
    el("span", { class: "status status-" + status }, status.replace("_", " ")), " ",
    el("a", { href: "/runs/" + encodeURIComponent(run.id) }, "Run " + String(run.id).slice(0, 8)),
    current ? el("span", { class: "meta" }, " (this run)") : null,
    el("span", { class: "meta" }, " · from " + String(run.source) + " · " + formatTime(run.created_at)),
    el("div", { class: "family-request" }, request.length > 300 ? request.slice(0, 300) + "…" : request));
}

function familyRunning() {
  return Boolean(family && family.runs.some((run) => run.status === "running"));
}

function showFamily(data) {
  if (!data || !Array.isArray(data.runs)) return;
  family = data;
  $("family").hidden = false;
  $("family-runs").replaceChildren(...data.runs.map(familyRow));
  $("family-branch").textContent = data.branch ? String(data.branch) : "–";
  const pr = safeUrl(data.pr_url);
  $("family-pr").replaceChildren(pr ? el("a", { href: pr }, pr)
    : data.pr_url ? "Pull request: " + String(data.pr_url) : "no pull request yet");
  if ($("followup-form").dataset.busy !== "true") $("followup-steer").disabled = !familyRunning();
}

// Fetch the family again (when an event says it changed); requests in a burst make one more.
async function refreshFamily() {
  if (familyBusy) {
    familyAgain = true;
    return;
  }
  familyBusy = true;
  try {
    do {
      familyAgain = false;
      const response = await apiFetch(runUrl, { headers: { Accept: "application/json" } });
      if (response.ok) showFamily((await response.json()).family);
    } while (familyAgain);
  } catch { /* the next event tries again */ } finally {
    familyBusy = false;
  }
}

function item(event, kind, ...children) {
  const type = String(event.type).toLowerCase().replace(/[^a-z]+/g, "-").replace(/^-|-$/g, "");
  return el("li", { class: "ev ev-" + type, "data-seq": event.seq, "data-type": event.type },
    el("span", { class: "ev-kind" }, kind), ...children);
}

function diffLines(lines, prefix, css) {
  return lines.map((line) => el("span", { class: "l " + css }, prefix + line));
}

function splitLines(text) {
  const lines = String(text ?? "").split("\n");
  if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

function editDiff(event) {
  const lines = [];
  if (event.insert_line !== undefined && event.insert_line !== null) {
    lines.push(el("span", { class: "l hunk" }, "@@ after line " + event.insert_line + " @@"));
  } else {
    lines.push(...diffLines(splitLines(event.old_str), "-", "del"));
  }
  lines.push(...diffLines(splitLines(event.new_str), "+", "add"));
  return el("section", { class: "file" }, el("h3", {}, event.filepath), el("pre", {}, ...lines));
}

function render(event) {
  switch (event.type) {
    case "start":
      setStatus("running");
      refreshFamily(); // the family now has a running run: it can be steered
      return item(event, "start", el("span", { class: "ev-message" }, "Run started for " + shortRepo(event.repo_url)));
    case "progress":
      $("bar").value = Number(event.percentage) || 0;
      $("bar").textContent = (Number(event.percentage) || 0) + "%";
      $("stage").textContent = event.stage + (event.message ? ": " + event.message : "");
      reachStage(event.stage, event.message);
      return item(event, event.stage, el("span", { class: "ev-message" }, event.message || ""));
    case "AI Message":
      return item(event, "agent", el("span", { class: "ev-message" }, event.message));
    case "output": {
      const li = item(event, "output", el("pre", {}, event.output));
      li.dataset.callId = event.call_id;
      return li;
    }
    case "Tool: Bash": {
      // The live chunks of this command give way to its whole output, folded.
      for (const chunk of document.querySelectorAll("#log li.ev-output")) {
        if (chunk.dataset.callId === String(event.call_id)) chunk.hidden = true;
      }
      const facts = ["exit " + event.exit_code, formatDuration(event.duration_ms)];
      if (event.timed_out) facts.push("timed out");
      const summary = el("summary", {}, "$ " + event.command + "  ",
        el("span", { class: event.exit_code === 0 ? "meta" : "exit-bad" }, "(" + facts.join(", ") + ")"));
      const output = event.output && event.output.length ? event.output : "(no output)";
      return item(event, "command", el("details", {}, summary, el("pre", {}, output)));
    }
    case "Tool: Read":
      return item(event, "read", el("code", {}, event.filepath),
        event.error ? el("span", { class: "ev-error" }, " " + event.error) : null);
    case "Tool: Edit":
      return item(event, "edit", el("code", {}, event.filepath),
        event.error ? el("span", { class: "ev-error" }, " " + event.error) : editDiff(event));
    case "Tool: Write":
      return item(event, "write", el("code", {}, event.filepath),
        event.error
          ? el("span", { class: "ev-error" }, " " + event.error)
          : el("details", {}, el("summary", {}, splitLines(event.content).length + " lines"),
              el("pre", {}, ...diffLines(splitLines(event.content), "+", "add"))));
    case "usage":
      showUsage(event);
      return item(event, "usage", el("span", { class: "meta" },
        `${Number(event.input_tokens || 0).toLocaleString()} tokens in, ${Number(event.output_tokens || 0).toLocaleString()} out, ${formatCost(event.cost_usd)}`));
    case "network_blocked":
      showBlocked(event);
      return item(event, "blocked", el("span", { class: "ev-error" },
        where(event) + " refused in the " + event.phase + " phase"
        + (event.command ? " (" + event.command + ")" : "") + ": " + event.reason),
        el("div", { class: "hint" }, event.hint || ""));
    case "verification":
      showReceipt(event);
      return item(event, "verification", el("span", { class: event.passed === true ? "ev-message" : "ev-error" },
        (event.passed === true ? "passed" : "FAILED") + ", " + (Array.isArray(event.commands) ? event.commands.length : 0)
        + " command(s) in the " + event.environment + " environment"));
    case "pr_created": {
      prDraft = event.draft === true;
      showPullRequest(event.pr_url);
      const safe = safeUrl(event.pr_url);
      return item(event, "pull request", safe ? el("a", { href: safe }, safe) : String(event.pr_url),
        el("span", { class: "meta" }, ` · ${event.files_changed} files, +${event.additions} −${event.deletions} · `),
        el("code", {}, event.branch));
    }
    case "pr_updated": {
      prDraft = event.draft === true;
      showPullRequest(event.pr_url);
      refreshFamily();
      const safe = safeUrl(event.pr_url);
      return item(event, "pull request",
        el("span", { class: "ev-message" }, "Pull request updated with "),
        el("code", {}, String(event.commit ?? "").slice(0, 12)), " ",
        safe ? el("a", { href: safe }, safe) : String(event.pr_url),
        el("span", { class: "meta" }, ` · ${event.files_changed} files, +${event.additions} −${event.deletions} · `),
        el("code", {}, event.branch));
    }
    case "followup_received": {
      refreshFamily();
      const queued = event.mode === "queue" && event.followup_run_id;
      const from = event.requester ? String(event.requester) + " via " + event.source : String(event.source);
      return item(event, "follow-up",
        el("span", { class: "ev-message" }, "Follow-up received: " + event.prompt),
        el("span", { class: "meta" }, " (from " + from + (queued ? "), queued as " : ", steered into this run)")),
        queued ? el("a", { href: "/runs/" + encodeURIComponent(event.followup_run_id) },
          "run " + String(event.followup_run_id).slice(0, 8)) : null);
    }
    case "error":
      return item(event, "error", el("span", { class: "ev-error" },
        `${event.code}: ${event.message} (stage ${event.stage}${event.retryable ? ", can be retried" : ""})`));
    case "complete":
      setStatus(event.status);
      endStages(event.status);
      if (event.status === "succeeded") $("bar").value = 100;
      $("stage").textContent = event.message || "";
      $("duration").textContent = formatDuration(event.duration_ms);
      if (event.pr_url) showPullRequest(event.pr_url);
      return item(event, "complete", el("span", { class: "ev-message" }, event.status + (event.message ? ": " + event.message : "")));
    default:
      return item(event, event.type, el("span", { class: "meta" }, JSON.stringify(event)));
  }
}

function handle(event) {
  const seq = Number(event.seq);
  if (!Number.isInteger(seq) || seq <= lastSeq) return; // already shown: a replay after a reconnect
  lastSeq = seq;
  $("log").append(render(event));
  document.body.dataset.lastSeq = String(seq);
  if (event.type === "complete") {
    finished = true;
    if (source) source.close(); // the stream ends here; do not let EventSource reconnect
    document.body.dataset.complete = "true";
    refreshFamily();
  }
}

function followWithEventSource() {
  source = new EventSource(eventsUrl);
  source.onmessage = (message) => {
    $("error").textContent = "";
    handle(JSON.parse(message.data));
  };
  source.onerror = async () => {
    if (finished) return;
    if (source.readyState === EventSource.CLOSED) {
      // The server refused the stream (e.g. 401 or 404): say why.
      const response = await apiFetch(eventsUrl + "?after=" + lastSeq, { headers: { Accept: "application/json" } });
      $("error").textContent = response.ok ? "The event stream closed." : await errorDetail(response);
      if (response.body) response.body.cancel();
    } else {
      $("error").textContent = "Connection lost; reconnecting…";
    }
  };
}

// fetch() + a stream reader, sending the API key; reconnects with Last-Event-ID until complete.
async function followWithFetch() {
  let delay = 1000;
  while (!finished) {
    try {
      const response = await apiFetch(eventsUrl, {
        headers: { Accept: "text/event-stream", "Last-Event-ID": String(lastSeq) },
        cache: "no-store",
      });
      if (response.status >= 400 && response.status < 500) {
        $("error").textContent = await errorDetail(response);
        return;
      }
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      $("error").textContent = "";
      delay = 1000;
      await readFrames(response.body);
    } catch (exc) {
      if (finished) return;
      $("error").textContent = "Connection lost; reconnecting… (" + exc.message + ")";
    }
    if (!finished) {
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }
}

async function readFrames(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (data) handle(JSON.parse(data));
        if (finished) return;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

async function loadRun() {
  const response = await apiFetch(runUrl, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    $("error").textContent = response.status === 401
      ? "This server requires an API key: enter it on the start page."
      : await errorDetail(response);
    return false;
  }
  const run = await response.json();
  $("repo").textContent = run.repo_url;
  $("title").textContent = "Run " + run.id.slice(0, 8);
  document.title = "Run " + run.id.slice(0, 8) + " · backspace";
  $("prompt").textContent = run.prompt;
  $("prompt").hidden = false;
  if (!finished) setStatus(run.status);
  if (run.pr_url) showPullRequest(run.pr_url);
  if (run.duration_ms !== null) $("duration").textContent = formatDuration(run.duration_ms);
  showUsage(run);
  showFamily(run.family);
  return true;
}

async function cancel() {
  const button = $("cancel");
  button.disabled = true;
  button.dataset.state = "cancelling";
  button.textContent = "Cancelling…";
  const response = await apiFetch(runUrl + "/cancel", { method: "POST" });
  if (!response.ok) {
    $("error").textContent = await errorDetail(response);
    button.dataset.state = "";
    button.textContent = "Cancel the run";
    button.disabled = finished;
  }
}

// The follow-up box: queue goes to the new run's page; a delivered steer stays on this one.
async function sendFollowUp(mode) {
  const box = $("followup-prompt");
  const error = $("followup-error");
  const form = $("followup-form");
  const prompt = box.value.trim();
  $("followup-message").textContent = "";
  if (!prompt) {
    error.textContent = "Enter what else to change.";
    box.focus();
    return;
  }
  error.textContent = "";
  form.dataset.busy = "true";
  $("followup-queue").disabled = true;
  $("followup-steer").disabled = true;
  try {
    const response = await apiFetch(runUrl + "/followups", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ prompt, mode }),
    });
    if (response.status !== 202) {
      error.textContent = await errorDetail(response);
      return;
    }
    const answer = await response.json();
    if (!answer.steered) {
      location.assign("/runs/" + encodeURIComponent(answer.run_id));
      return;
    }
    box.value = "";
    $("followup-message").textContent = "Follow-up " + String(answer.message || "delivered") + ".";
    refreshFamily();
  } catch (exc) {
    error.textContent = "Could not reach the server: " + exc;
  } finally {
    form.dataset.busy = "";
    $("followup-queue").disabled = false;
    $("followup-steer").disabled = !familyRunning();
  }
}

$("followup-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sendFollowUp("queue");
});
$("followup-steer").addEventListener("click", () => sendFollowUp("steer"));
$("cancel").addEventListener("click", cancel);
drawStages();
loadRun().then((ok) => {
  if (!ok) return;
  if (apiKey()) followWithFetch();
  else followWithEventSource();
});
