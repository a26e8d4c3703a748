// The start page: a form that starts a run, and the recent runs, polled every few seconds.
"use strict";

const POLL_MS = 3000;

function runRow(run) {
  const pr = safeUrl(run.pr_url);
  const status = el("span", { class: "status status-" + run.status }, run.status.replace("_", " "));
  return el("tr", { "data-run-id": run.id },
    el("td", { "data-label": "Repository" }, el("a", { href: "/runs/" + encodeURIComponent(run.id) }, shortRepo(run.repo_url))),
    el("td", { class: "request", "data-label": "Request" }, run.prompt.length > 160 ? run.prompt.slice(0, 160) + "…" : run.prompt),
    el("td", { "data-label": "Status" }, status, run.stage && !["complete", "queued"].includes(run.stage) && run.status === "running" ? " " + run.stage : ""),
    el("td", { "data-label": "Pull request" }, pr ? el("a", { href: pr }, "pull request") : "–"),
    el("td", { class: "num", "data-label": "Duration" }, formatDuration(run.duration_ms)),
    el("td", { class: "num", "data-label": "Cost" }, formatCost(run.cost_usd)),
    el("td", { "data-label": "Started" }, el("time", { datetime: run.created_at }, formatTime(run.created_at))),
  );
}

async function refresh() {
  const error = document.getElementById("list-error");
  try {
    const response = await apiFetch("/api/runs?limit=50", { headers: { Accept: "application/json" } });
    if (!response.ok) {
      error.textContent = response.status === 401
        ? "This server requires an API key: enter it in the form above to see the runs."
        : "Could not list the runs: " + (await errorDetail(response));
      return;
    }
    const { runs } = await response.json();
    error.textContent = "";
    document.getElementById("runs").replaceChildren(...runs.map(runRow));
    document.getElementById("runs-empty").hidden = runs.length > 0;
  } catch (exc) {
    error.textContent = "Could not reach the server: " + exc;
  }
}

async function start(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const error = document.getElementById("form-error");
  const button = document.getElementById("submit");
  const repo = form.elements.repo_url.value.trim();
  const prompt = form.elements.prompt.value.trim();
  setApiKey(form.elements.api_key.value.trim());
  if (!repo || !prompt) {
    error.textContent = !repo ? "Enter a repository." : "Enter a request.";
    (repo ? form.elements.prompt : form.elements.repo_url).focus();
    return;
  }
  error.textContent = "";
  button.disabled = true;
  try {
    const response = await apiFetch("/api/code", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ repo_url: repo, prompt }),
    });
    if (response.status === 202) {
      const run = await response.json();
      location.assign("/runs/" + encodeURIComponent(run.id));
      return;
    }
    error.textContent = await errorDetail(response);
  } catch (exc) {
    error.textContent = "Could not reach the server: " + exc;
  } finally {
    button.disabled = false;
  }
}

document.getElementById("key").value = apiKey();
document.getElementById("start").addEventListener("submit", start);
refresh();
setInterval(refresh, POLL_MS);
